#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller) for Laneway development and CI.
#
#   scripts/kafka.sh up            fetch jars (once), format storage (once), start, wait until it answers
#   scripts/kafka.sh down [--wipe] stop the broker (SIGTERM, then SIGKILL after 30 s); --wipe also deletes its data
#   scripts/kafka.sh wipe          same as `down --wipe`
#   scripts/kafka.sh status        print up/down; exit 0 if up, 3 if down
#
# Needs: java 17+, mvn (first `up` only, to fetch jars from Maven Central via kafka/pom.xml).
# Environment:
#   LANEWAY_RUN_DIR          runtime state root (default <repo>/.run); Kafka lives in $LANEWAY_RUN_DIR/kafka
#   LANEWAY_KAFKA_BOOTSTRAP  if set to anything but localhost:$PORT/127.0.0.1:$PORT, `up` starts nothing
#   LANEWAY_KAFKA_PORT       broker port (default 9092); the controller listens on the next port
#   LANEWAY_KAFKA_LIBS       folder of the broker jars (default $LANEWAY_RUN_DIR/kafka/libs); tests
#                            that start a second, throwaway broker share the first one's jars
#   LANEWAY_PYTHON           python used for the readiness probe (default <repo>/.venv/bin/python, needs aiokafka);
#                            without it the probe uses the Java BrokerApiVersionsCommand from the jars
#   LANEWAY_KAFKA_PROBE      force the probe: "python" or "java" (default: python if usable, else java)
#   LANEWAY_KAFKA_WAIT_S     readiness deadline in seconds (default 60)
#   KAFKA_HEAP_OPTS          JVM heap (default "-Xmx1g -Xms512m")
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${LANEWAY_RUN_DIR:-$REPO_DIR/.run}"
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd)"

POM="$REPO_DIR/kafka/pom.xml"
KDIR="$RUN_DIR/kafka"
LIBS="${LANEWAY_KAFKA_LIBS:-$KDIR/libs}"
DATA="$KDIR/data"
LOGS="$KDIR/logs"
PIDFILE="$KDIR/kafka.pid"
PROPS="$KDIR/server.properties"
LOG4J="$KDIR/log4j2.properties"
CLUSTER_ID_FILE="$KDIR/cluster.id"
STAMP="$LIBS/.pom.sha256"

HOST=127.0.0.1
PORT="${LANEWAY_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${LANEWAY_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
BOOTSTRAP="$HOST:$PORT"
WAIT_S="${LANEWAY_KAFKA_WAIT_S:-60}"
STOP_WAIT_S=30
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1g -Xms512m}"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi

log() { printf 'kafka.sh: %s\n' "$*"; }
die() { printf 'kafka.sh: ERROR: %s\n' "$*" >&2; exit 1; }

kafka_version() {
    local jar=""
    for jar in "$LIBS"/kafka_2.13-*.jar; do break; done
    if [[ -f "$jar" ]]; then
        jar="${jar##*/kafka_2.13-}"
        echo "${jar%.jar}"
    else
        sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1
    fi
}

# ---------------------------------------------------------------- readiness probe

PY="${LANEWAY_PYTHON:-$REPO_DIR/.venv/bin/python}"
PROBE_KIND=""

choose_probe() {
    [[ -n "$PROBE_KIND" ]] && return 0
    case "${LANEWAY_KAFKA_PROBE:-}" in
        java) PROBE_KIND=java ;;
        python) PROBE_KIND=python ;;
        *)
            if [[ -x "$PY" ]] && "$PY" -c 'import aiokafka' >/dev/null 2>&1; then
                PROBE_KIND=python
            else
                PROBE_KIND=java
            fi ;;
    esac
}

# Cheap check: is anything accepting TCP connections on the port?
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" >/dev/null 2>&1
}

# Succeeds when the bootstrap server answers a Kafka metadata request listing >= 1 broker.
probe() {
    local bs="${1:-$BOOTSTRAP}"
    choose_probe
    if [[ "$PROBE_KIND" == python ]]; then
        timeout 20 "$PY" - "$bs" >/dev/null 2>&1 <<'PYEOF'
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient

async def main(bs):
    admin = AIOKafkaAdminClient(bootstrap_servers=bs, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        if not cluster.get("brokers"):
            sys.exit(1)
    finally:
        await admin.close()

asyncio.run(main(sys.argv[1]))
PYEOF
    else
        [[ -f "$STAMP" ]] || return 1
        local cfg="$KDIR/probe-client.properties"
        printf 'request.timeout.ms=5000\ndefault.api.timeout.ms=8000\n' >"$cfg"
        local out
        out="$(timeout 30 "$JAVA" -Xmx128m -cp "$LIBS/*" \
            -Dlog4j2.configurationFile="$KDIR/log4j2-tools.properties" \
            org.apache.kafka.tools.BrokerApiVersionsCommand \
            --bootstrap-server "$bs" --command-config "$cfg" 2>/dev/null)" || return 1
        [[ "$out" == *"(id:"* ]]
    fi
}

# ---------------------------------------------------------------- process helpers

managed_pid() {
    # Prints the pid from the pid file if that process is alive and is our Kafka.
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
    echo "$pid"
}

LOG_START_LINE=0  # server.log line count before this start, to pick out this run's errors

show_log_tail() {
    local f="$LOGS/server.log"
    if [[ -s "$f" ]]; then
        local errs
        errs="$(tail -n +"$((LOG_START_LINE + 1))" "$f" | grep -E '^\[[^]]*\] (ERROR|FATAL) |^Caused by:' | tail -n 15 || true)"
        if [[ -n "$errs" ]]; then
            echo "---- errors in $f from this start ----" >&2
            printf '%s\n' "$errs" >&2
        fi
        echo "---- last 40 lines of $f ----" >&2
        tail -n 40 "$f" | cut -c1-400 >&2
    fi
    if [[ -s "$LOGS/kafka.out" ]]; then
        echo "---- last 40 lines of $LOGS/kafka.out (JVM stdout/stderr) ----" >&2
        tail -n 40 "$LOGS/kafka.out" >&2
    fi
}

# ---------------------------------------------------------------- setup steps

fetch_jars() {
    local want have=""
    want="$(sha256sum "$POM" | cut -d' ' -f1)"
    [[ -f "$STAMP" ]] && have="$(cat "$STAMP")"
    if [[ "$want" == "$have" ]] && ls "$LIBS"/kafka_2.13-*.jar >/dev/null 2>&1; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found: it is needed once to fetch the Kafka jars (apt-get install maven)"
    log "fetching Kafka jars (mvn, kafka/pom.xml)..."
    local tmp="$KDIR/libs.tmp"
    rm -rf "$tmp"
    mkdir -p "$KDIR"
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" >"$KDIR/mvn.log" 2>&1; then
        cat "$KDIR/mvn.log" >&2
        die "mvn failed to fetch the Kafka jars"
    fi
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    echo "$want" >"$STAMP"
    local jars=("$LIBS"/*.jar)
    log "jars in $LIBS (${#jars[@]} files, Kafka $(kafka_version))"
}

write_configs() {
    mkdir -p "$DATA" "$LOGS"
    cat >"$PROPS" <<EOF
# Generated by scripts/kafka.sh - edits are overwritten on every 'up'.
# Single-node KRaft, combined broker+controller, dynamic quorum (formatted with --standalone).
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT

log.dirs=$DATA
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Laneway declares every topic itself with the right partition count; a typo must not
# silently create a one-partition topic.
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0

log.retention.hours=168
log.segment.bytes=1073741824
log.retention.check.interval.ms=300000
num.network.threads=3
num.io.threads=8
EOF
    cat >"$LOG4J" <<EOF
# Generated by scripts/kafka.sh
status = warn
name = laneway-kafka
appender.server.type = RollingFile
appender.server.name = server
appender.server.fileName = $LOGS/server.log
appender.server.filePattern = $LOGS/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 50MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = server
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
    cat >"$KDIR/log4j2-tools.properties" <<'EOF'
# Generated by scripts/kafka.sh: CLI tools log warnings to stderr only.
status = error
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = stderr
EOF
}

format_storage() {
    [[ -f "$DATA/meta.properties" ]] && return 0
    local cid
    if [[ -s "$CLUSTER_ID_FILE" ]]; then
        cid="$(cat "$CLUSTER_ID_FILE")"
    else
        cid="$("$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$KDIR/log4j2-tools.properties" \
            kafka.tools.StorageTool random-uuid)"
        echo "$cid" >"$CLUSTER_ID_FILE"
    fi
    log "formatting storage (cluster id $cid)..."
    if ! "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$KDIR/log4j2-tools.properties" \
        kafka.tools.StorageTool format --standalone --ignore-formatted \
        --cluster-id "$cid" --config "$PROPS" >"$LOGS/format.log" 2>&1; then
        cat "$LOGS/format.log" >&2
        die "storage format failed (to start over: scripts/kafka.sh wipe)"
    fi
}

start_broker() {
    log "starting broker..."
    : >"$LOGS/kafka.out"
    LOG_START_LINE=0
    if [[ -f "$LOGS/server.log" ]]; then LOG_START_LINE="$(wc -l <"$LOGS/server.log")"; fi
    # setsid: own session, so it outlives the calling shell/make and ignores their SIGINT/SIGHUP.
    # The inner bash writes its own pid and then execs java, so the pid file holds the JVM's pid.
    # shellcheck disable=SC2086,SC2016
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
        "$JAVA" $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -Djava.awt.headless=true \
        -Dkafka.logs.dir="$LOGS" \
        -Dlog4j2.configurationFile="$LOG4J" \
        -cp "$LIBS/*" kafka.Kafka "$PROPS" \
        </dev/null >>"$LOGS/kafka.out" 2>&1 9>&- &
    local _
    for _ in $(seq 1 50); do
        [[ -s "$PIDFILE" ]] && break
        sleep 0.1
    done
}

wait_ready() {
    log "waiting for broker on $BOOTSTRAP (up to ${WAIT_S}s, probe: $PROBE_KIND)..."
    local deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        if ! managed_pid >/dev/null; then
            echo "kafka.sh: ERROR: the broker process exited during startup" >&2
            show_log_tail
            exit 1
        fi
        if port_open "$HOST" "$PORT" && probe; then
            return 0
        fi
        sleep 1
    done
    echo "kafka.sh: ERROR: broker did not answer a metadata request on $BOOTSTRAP within ${WAIT_S}s" >&2
    show_log_tail
    echo "kafka.sh: the broker process ($(cat "$PIDFILE" 2>/dev/null)) was left running: 'scripts/kafka.sh up' waits for it again, 'scripts/kafka.sh down' stops it" >&2
    exit 1
}

# ---------------------------------------------------------------- subcommands

is_local_bootstrap() {
    case "${1:-}" in
        "" | "localhost:$PORT" | "127.0.0.1:$PORT") return 0 ;;
        *) return 1 ;;
    esac
}

cmd_up() {
    local ext="${LANEWAY_KAFKA_BOOTSTRAP:-}"
    if ! is_local_bootstrap "$ext"; then
        log "LANEWAY_KAFKA_BOOTSTRAP=$ext: using that external broker, not starting a local one"
        return 0
    fi
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Kafka 4.x needs Java 17+)"
    mkdir -p "$KDIR" "$LOGS"
    choose_probe

    local pid
    if pid="$(managed_pid)"; then
        if port_open "$HOST" "$PORT" && probe; then
            log "Kafka $(kafka_version) already up on $BOOTSTRAP (pid $pid)"
            return 0
        fi
        # Running but not answering yet (e.g. another 'up' in progress): just wait for it.
        wait_ready
        log "Kafka $(kafka_version) up on $BOOTSTRAP (pid $pid)"
        return 0
    fi
    rm -f "$PIDFILE"

    if port_open "$HOST" "$PORT"; then
        if [[ "$PROBE_KIND" == java ]]; then fetch_jars; fi  # the Java probe needs the jars
        if probe; then
            log "a Kafka broker not started by this script already answers on $BOOTSTRAP: using it"
            return 0
        fi
        die "port $PORT is in use by something that does not answer Kafka metadata requests"
    fi

    local t0=$SECONDS
    fetch_jars
    write_configs
    format_storage
    start_broker
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    wait_ready
    log "Kafka $(kafka_version) up on $BOOTSTRAP (pid $pid, $((SECONDS - t0))s)"
}

cmd_down() {
    local wipe=0
    for a in "$@"; do
        case "$a" in
            --wipe) wipe=1 ;;
            *) die "unknown option for down: $a" ;;
        esac
    done
    local pid
    if pid="$(managed_pid)"; then
        log "stopping broker (pid $pid)..."
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_WAIT_S))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "broker did not stop within ${STOP_WAIT_S}s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
        log "stopped"
    else
        log "not running"
    fi
    rm -f "$PIDFILE"
    if ((wipe)); then
        rm -rf "$DATA" "$CLUSTER_ID_FILE"
        log "wiped $DATA"
    fi
}

cmd_status() {
    local ext="${LANEWAY_KAFKA_BOOTSTRAP:-}"
    if ! is_local_bootstrap "$ext"; then
        if probe "$ext"; then echo "up (external broker $ext)"; return 0; fi
        echo "down (external broker $ext not answering)"
        return 3
    fi
    local pid
    if pid="$(managed_pid)"; then
        if port_open "$HOST" "$PORT" && probe; then
            echo "up: Kafka $(kafka_version) on $BOOTSTRAP (pid $pid)"
            return 0
        fi
        echo "down: process $pid is running but not answering on $BOOTSTRAP (starting, or unhealthy: see $LOGS/server.log)"
        return 3
    fi
    if port_open "$HOST" "$PORT" && probe; then
        echo "up: a broker not managed by this script answers on $BOOTSTRAP"
        return 0
    fi
    echo "down"
    return 3
}

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# Serialise concurrent up/down/wipe (e.g. parallel make targets). fd 9 is closed for the broker.
take_lock() {
    mkdir -p "$KDIR"
    exec 9>"$KDIR/.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 180 9 || die "another scripts/kafka.sh is still running (lock $KDIR/.lock)"
    fi
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in up | down | wipe) take_lock ;; esac
    case "$cmd" in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        wipe) cmd_down --wipe ;;
        status) cmd_status "$@" ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
