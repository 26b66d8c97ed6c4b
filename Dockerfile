# Laneway worker image (Faust on Python 3.11). Used by docker-compose.yml; the broker is apache/kafka.
#   docker compose up --build
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs: the build context also holds .venv/ and .run/ (Kafka jars, data).
# README.md* : pyproject names README.md as the readme; the glob keeps COPY working if it is absent.
COPY pyproject.toml requirements.lock README.md* ./
COPY streams ./streams
COPY agents ./agents
# The lock as constraints: runtime dependencies only, at the versions CI tested.
RUN pip install -c requirements.lock .

RUN useradd --system --create-home --home-dir /home/laneway laneway \
    && mkdir -p /var/lib/laneway \
    && chown laneway /var/lib/laneway
USER laneway

# In a container the web server must bind all interfaces to be reachable through the published port.
ENV LANEWAY_WEB_HOST=0.0.0.0 \
    LANEWAY_DATA_DIR=/var/lib/laneway
VOLUME ["/var/lib/laneway"]

# 6066: Faust web server (health, metrics, admin API); 2575: MLLP listener.
EXPOSE 6066 2575

CMD ["faust", "-A", "agents.worker", "worker", "-l", "info"]
