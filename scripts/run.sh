#!/usr/bin/env bash
# `make run`: start the shared worker and the dedicated-lane worker, wait for both, then feed
# demo traffic in the foreground and print what arrives downstream. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR="${LANEWAY_RUN_DIR:-.run}"
LOG_DIR="$RUN_DIR/logs"
mkdir -p "$LOG_DIR"
FAUST=.venv/bin/faust
WEB_PORT="${LANEWAY_WEB_PORT:-6066}"

# The admin token: yours if set, else one generated once and kept (git-ignored) for next time.
if [[ -z "${LANEWAY_ADMIN_TOKEN:-}" ]]; then
  TOKEN_FILE="$RUN_DIR/admin-token"
  [[ -s "$TOKEN_FILE" ]] || .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(24))" >"$TOKEN_FILE"
  LANEWAY_ADMIN_TOKEN="$(cat "$TOKEN_FILE")"
  export LANEWAY_ADMIN_TOKEN
  fi

PIDS=()
stop_workers() {
  echo "==> stopping workers"
  kill "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
}
trap stop_workers EXIT
trap 'exit 0' INT TERM  # Ctrl-C is the normal way to end the demo

wait_ready() {  # name pid log
  local deadline=$((SECONDS + 90))
  until grep -q "Ready" "$3" 2>/dev/null; do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "!! the $1 exited during start-up; last lines of $3:" >&2
      tail -n 40 "$3" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      echo "!! the $1 was not ready within 90 s; last lines of $3:" >&2
      tail -n 40 "$3" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "==> $1 ready (pid $2, log $3)"
}

echo "==> starting the shared worker and the dedicated-lane worker"
$FAUST -A agents.worker worker -l info >"$LOG_DIR/worker.log" 2>&1 &
PIDS+=($!)
wait_ready "shared worker" "${PIDS[0]}" "$LOG_DIR/worker.log"
# The lane worker lowers its own OS priority (LANEWAY_LANE_NICE): a flooding tenant must not
# starve the shared lane.
$FAUST -A agents.lane_worker worker -l info >"$LOG_DIR/lane-worker.log" 2>&1 &
PIDS+=($!)
wait_ready "lane worker" "${PIDS[1]}" "$LOG_DIR/lane-worker.log"

TOKEN_HINT="${TOKEN_FILE:-your LANEWAY_ADMIN_TOKEN}"
echo "==> where to look"
echo "    dashboard:  http://127.0.0.1:$WEB_PORT/dashboard (sign in with the admin token in $TOKEN_HINT)"
echo "    metrics:    http://127.0.0.1:$WEB_PORT/metrics (Prometheus)"
echo "    admin API:  http://127.0.0.1:$WEB_PORT/api/tenants (Authorization: Bearer <admin token>)"
echo "    events:     $FAUST -A agents.worker consume --tenant st-marys --follow   (--dlq: rejects)"
echo "==> sending demo traffic; Ctrl-C to stop"
$FAUST -A agents.worker demo-traffic "$@"
