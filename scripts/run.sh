#!/usr/bin/env bash
# `make run`: start a worker in the background, wait for it, then feed demo traffic in the
# foreground and print what arrives downstream. Ctrl-C stops the demo and the worker.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR="${LANEWAY_RUN_DIR:-.run}"
WEB_PORT="${LANEWAY_WEB_PORT:-6066}"
LOG_DIR="$RUN_DIR/logs"
mkdir -p "$LOG_DIR"
FAUST=.venv/bin/faust

echo "==> starting the Laneway worker (log: $LOG_DIR/worker.log, web: http://127.0.0.1:$WEB_PORT)"
$FAUST -A agents.worker worker -l info >"$LOG_DIR/worker.log" 2>&1 &
WORKER_PID=$!
stop_worker() {
  echo "==> stopping worker"
  kill "$WORKER_PID" 2>/dev/null || true
  wait "$WORKER_PID" 2>/dev/null || true
}
trap stop_worker EXIT
trap 'exit 0' INT TERM  # Ctrl-C is the normal way to end the demo

deadline=$((SECONDS + 90))
until grep -q "Ready" "$LOG_DIR/worker.log" 2>/dev/null; do
  if ! kill -0 "$WORKER_PID" 2>/dev/null; then
    echo "!! the worker exited during start-up; last lines of its log:" >&2
    tail -n 40 "$LOG_DIR/worker.log" >&2
    exit 1
  fi
  if ((SECONDS > deadline)); then
    echo "!! the worker was not ready within 90 s; last lines of its log:" >&2
    tail -n 40 "$LOG_DIR/worker.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "==> worker ready (pid $WORKER_PID)"
echo "    events land on laneway.out.<tenant>, rejects on laneway.dlq.<tenant> (see README)"
echo "==> sending demo traffic; Ctrl-C to stop"
$FAUST -A agents.worker demo-traffic "$@"
