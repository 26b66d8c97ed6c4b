#!/usr/bin/env bash
# `make run` and `make run-cluster`: start the shared workers and the dedicated-lane workers of
# one deployment on one broker, wait for each, then feed demo traffic in the foreground and print
# what arrives downstream. Ctrl-C stops everything.
#
#   scripts/run.sh [--shared N] [--lanes M] [demo-traffic options, e.g. --seconds 60]
#
# `make run` is 1 + 1, `make run-cluster` 3 + 2. Worker n of a kind gets the base ports + 2(n-1):
# shared workers web 6066, 6068, ... (LANEWAY_WEB_PORT), MLLP 2575, 2577, ...
# (LANEWAY_MLLP_PORT; TLS 2576, 2578, ...), lane workers web 6067, 6069, ...
# (LANEWAY_LANE_WEB_PORT); the environment may move the bases. Each worker keeps its state in
# its own folder, $LANEWAY_DATA_DIR/<app id>-<web port>.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=1
LANES=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --shared) SHARED="$2"; shift 2 ;;
    --lanes) LANES="$2"; shift 2 ;;
    *) break ;;  # the rest is for demo-traffic
  esac
done
if ! [[ "$SHARED" =~ ^[1-9][0-9]*$ && "$LANES" =~ ^[0-9]+$ ]]; then
  echo "!! --shared needs a count of at least 1, --lanes a count of at least 0" >&2
  exit 2
fi

RUN_DIR="${LANEWAY_RUN_DIR:-.run}"
LOG_DIR="$RUN_DIR/logs"
mkdir -p "$LOG_DIR"
FAUST=.venv/bin/faust
WEB_PORT="${LANEWAY_WEB_PORT:-6066}"
LANE_WEB_PORT="${LANEWAY_LANE_WEB_PORT:-6067}"
MLLP_PORT="${LANEWAY_MLLP_PORT:-2575}"
MLLP_TLS_PORT="${LANEWAY_MLLP_TLS_PORT:-2576}"
READY_TIMEOUT_S=120  # per start wave, on a busy 2-core host

# The admin token: yours if set, else one generated once and kept (git-ignored) for next time.
if [[ -z "${LANEWAY_ADMIN_TOKEN:-}" ]]; then
  TOKEN_FILE="$RUN_DIR/admin-token"
  [[ -s "$TOKEN_FILE" ]] || .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(24))" >"$TOKEN_FILE"
  LANEWAY_ADMIN_TOKEN="$(cat "$TOKEN_FILE")"
  export LANEWAY_ADMIN_TOKEN
fi

PIDS=()
stop_workers() {
  ((${#PIDS[@]})) || return 0
  echo "==> stopping workers"
  kill "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
}
trap stop_workers EXIT
trap 'exit 0' INT TERM  # Ctrl-C is the normal way to end the demo

NAMES=()
LOGS=()
start_worker() {  # name log app [VAR=value ...]: the worker runs in the background
  local name="$1" log="$2" app="$3"
  shift 3
  env "$@" $FAUST -A "$app" worker -l info >"$log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
  LOGS+=("$log")
}

wait_ready() {  # index into PIDS/NAMES/LOGS
  local name="${NAMES[$1]}" pid="${PIDS[$1]}" log="${LOGS[$1]}"
  until grep -q "Ready" "$log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "!! $name exited during start-up; last lines of $log:" >&2
      tail -n 40 "$log" >&2
      exit 1
    fi
    if ((SECONDS > DEADLINE)); then
      echo "!! $name was not ready within ${READY_TIMEOUT_S} s; last lines of $log:" >&2
      tail -n 40 "$log" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "==> $name ready (pid $pid, log $log)"
}

shared_env() {  # n: the settings of shared worker n
  local offset=$((2 * ($1 - 1)))
  echo "LANEWAY_WEB_PORT=$((WEB_PORT + offset)) LANEWAY_MLLP_PORT=$((MLLP_PORT + offset))" \
    "LANEWAY_MLLP_TLS_PORT=$((MLLP_TLS_PORT + offset))"
}

echo "==> starting $SHARED shared worker(s) and $LANES dedicated-lane worker(s)"
# The first shared worker alone: it creates the topics the others then find.
DEADLINE=$((SECONDS + READY_TIMEOUT_S))
# shellcheck disable=SC2046  # shared_env's words are separate VAR=value arguments
start_worker "shared-1" "$LOG_DIR/shared-1.log" agents.worker $(shared_env 1)
wait_ready 0
DEADLINE=$((SECONDS + READY_TIMEOUT_S))
for ((n = 2; n <= SHARED; n++)); do
  # shellcheck disable=SC2046
  start_worker "shared-$n" "$LOG_DIR/shared-$n.log" agents.worker $(shared_env "$n")
done
# A lane worker lowers its own OS priority (LANEWAY_LANE_NICE): a flooding tenant must not
# starve the shared lane.
for ((m = 1; m <= LANES; m++)); do
  start_worker "lane-$m" "$LOG_DIR/lane-$m.log" agents.lane_worker \
    "LANEWAY_LANE_WEB_PORT=$((LANE_WEB_PORT + 2 * (m - 1)))"
done
for ((i = 1; i < ${#PIDS[@]}; i++)); do
  wait_ready "$i"
done
echo "==> all $((SHARED + LANES)) workers ready"

TOKEN_HINT="${TOKEN_FILE:-your LANEWAY_ADMIN_TOKEN}"
echo "==> where to look (sign in to a dashboard with the admin token in $TOKEN_HINT)"
for ((n = 1; n <= SHARED; n++)); do
  port=$((WEB_PORT + 2 * (n - 1)))
  echo "    shared-$n:  http://127.0.0.1:$port/dashboard  http://127.0.0.1:$port/metrics" \
    " MLLP 127.0.0.1:$((MLLP_PORT + 2 * (n - 1)))"
done
for ((m = 1; m <= LANES; m++)); do
  echo "    lane-$m:    http://127.0.0.1:$((LANE_WEB_PORT + 2 * (m - 1)))/metrics"
done
echo "    admin API:  http://127.0.0.1:$WEB_PORT/api/tenants (Authorization: Bearer <admin token>; any shared worker)"
echo "    events:     $FAUST -A agents.worker consume --tenant st-marys --follow   (--dlq: rejects)"
echo "==> sending demo traffic to shared-1 (its router and the others split the tenants); Ctrl-C to stop"
$FAUST -A agents.worker demo-traffic "$@"
