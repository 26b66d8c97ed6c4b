#!/usr/bin/env bash
# Local Apache Kafka (KRaft, combined broker+controller) for Laneway development, CI and broker-failure
# tests: one node by default, a real N-node cluster on loopback with KAFKA_NODES=N.
#
#   scripts/kafka.sh up             fetch jars (once), format storage (once), start every node, wait until all answer
#   scripts/kafka.sh down [--wipe]  stop every node (SIGTERM, then SIGKILL after 30 s); --wipe also deletes their data
#   scripts/kafka.sh wipe           same as `down --wipe`
#   scripts/kafka.sh status         print up/down (and each node of a cluster); exit 0 if all up, 3 if not
#   scripts/kafka.sh bootstrap      print the bootstrap servers clients should use
#   scripts/kafka.sh stop-node N    stop node N gracefully (SIGTERM; SIGKILL after 30 s) and wait until it is gone
#   scripts/kafka.sh kill-node N    SIGKILL node N (a crash) and wait until it is gone
#   scripts/kafka.sh start-node N   start node N again on its existing data, wait until it answers and is in the cluster
#
# Nodes and ports (P = LANEWAY_KAFKA_PORT, default 9092; C = LANEWAY_KAFKA_CONTROLLER_PORT, default P+1):
#   KAFKA_NODES=1  node 1 only: clients on P, controller on C; state in $LANEWAY_RUN_DIR/kafka/
#                  (data/, logs/, kafka.pid, server.properties); bootstrap 127.0.0.1:P
#   KAFKA_NODES=N  nodes 1..N (2..9); node i takes clients on P+2(i-1) and its controller on C+2(i-1),
#                  so by default 9092/9093, 9094/9095, 9096/9097; state in $LANEWAY_RUN_DIR/kafka/node-i/;
#                  bootstrap 127.0.0.1:P,127.0.0.1:P+2,...; every node is a voter of a static quorum
#                  (controller.quorum.voters); topics default to replication factor min(N,3), min ISR RF-1
#                  (3 nodes: RF 3, min.insync.replicas 2, so one node may be down and acks=all still works)
#
# Needs: java 17+, mvn (first `up` only, to fetch jars from Maven Central via kafka/pom.xml).
# Environment:
#   KAFKA_NODES              number of nodes (default 1); use the same value for every command on a run dir
#   LANEWAY_RUN_DIR          runtime state root (default <repo>/.run); Kafka lives in $LANEWAY_RUN_DIR/kafka
#   LANEWAY_KAFKA_BOOTSTRAP  if set to anything but this script's own servers (see `bootstrap`), `up` starts nothing
#   LANEWAY_KAFKA_PORT       client port of node 1 (default 9092)
#   LANEWAY_KAFKA_CONTROLLER_PORT  controller port of node 1 (default: the client port + 1)
#   LANEWAY_KAFKA_LIBS       folder of the broker jars (default $LANEWAY_RUN_DIR/kafka/libs); tests
#                            that start a second, throwaway broker share the first one's jars
#   LANEWAY_PYTHON           python used for the readiness probe (default <repo>/.venv/bin/python, needs aiokafka);
#                            without it the probe uses the Java BrokerApiVersionsCommand from the jars
#   LANEWAY_KAFKA_PROBE      force the probe: "python" or "java" (default: python if usable, else java)
#   LANEWAY_KAFKA_WAIT_S     readiness deadline in seconds (default 60, 120 for a cluster)
#   KAFKA_HEAP_OPTS          JVM heap per node (default "-Xmx1g -Xms512m", "-Xmx512m -Xms256m" for a cluster)
set -euo pipefail

log() { printf 'kafka.sh: %s\n' "$*"; }
die() { printf 'kafka.sh: ERROR: %s\n' "$*" >&2; exit 1; }

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${LANEWAY_RUN_DIR:-$REPO_DIR/.run}"
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd)"

NODES="${KAFKA_NODES:-1}"
[[ "$NODES" =~ ^[1-9]$ ]] || die "KAFKA_NODES must be a number from 1 to 9 (got '$NODES')"

POM="$REPO_DIR/kafka/pom.xml"
KDIR="$RUN_DIR/kafka"
LIBS="${LANEWAY_KAFKA_LIBS:-$KDIR/libs}"
STAMP="$LIBS/.pom.sha256"
TOOLS_LOG4J="$KDIR/log4j2-tools.properties"
if ((NODES == 1)); then
    CLUSTER_ID_FILE="$KDIR/cluster.id"
else
    CLUSTER_ID_FILE="$KDIR/node-cluster.id"
fi
NODE_COUNT_FILE="$KDIR/node-count"  # how many nodes the cluster's storage was formatted for

HOST=127.0.0.1
PORT="${LANEWAY_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${LANEWAY_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
STOP_WAIT_S=30
QUORUM_GRACE_S=5  # see stop_nodes
if ((NODES == 1)); then
    WAIT_S="${LANEWAY_KAFKA_WAIT_S:-60}"
    HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1g -Xms512m}"
else
    WAIT_S="${LANEWAY_KAFKA_WAIT_S:-120}"
    HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
fi

# This script as messages should name it, with KAFKA_NODES when it is not the default.
SELF="scripts/kafka.sh"
if ((NODES > 1)); then SELF="KAFKA_NODES=$NODES $SELF"; fi

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi

# ---------------------------------------------------------------- nodes

node_port() { echo $((PORT + 2 * ($1 - 1))); }
node_controller_port() { echo $((CONTROLLER_PORT + 2 * ($1 - 1))); }

BOOTSTRAP=""
VOTERS=""
declare -A PORT_OWNER=()
for ((n = 1; n <= NODES; n++)); do
    BOOTSTRAP+="${BOOTSTRAP:+,}$HOST:$(node_port "$n")"
    VOTERS+="${VOTERS:+,}$n@$HOST:$(node_controller_port "$n")"
    if ((NODES > 1)); then
        for p in "$(node_port "$n")" "$(node_controller_port "$n")"; do
            [[ -z "${PORT_OWNER[$p]:-}" ]] ||
                die "port $p is wanted by both ${PORT_OWNER[$p]} and node $n: choose LANEWAY_KAFKA_CONTROLLER_PORT outside $PORT..$(node_port "$NODES")"
            PORT_OWNER[$p]="node $n"
        done
    fi
done

# select_node N: point the per-node variables (paths, ports, names) at node N. A single node keeps
# its state directly in $KDIR, as it always has; cluster nodes each get $KDIR/node-N.
select_node() {
    NODE="$1"
    NODE_PORT="$(node_port "$NODE")"
    NODE_CONTROLLER_PORT="$(node_controller_port "$NODE")"
    NODE_BOOTSTRAP="$HOST:$NODE_PORT"
    if ((NODES == 1)); then
        NDIR="$KDIR"
        NODE_NAME=""
    else
        NDIR="$KDIR/node-$NODE"
        NODE_NAME="node $NODE"
    fi
    DATA="$NDIR/data"
    LOGS="$NDIR/logs"
    PIDFILE="$NDIR/kafka.pid"
    PROPS="$NDIR/server.properties"
    LOG4J="$NDIR/log4j2.properties"
}

# Log a message about the selected node: prefixed with "node N: " in a cluster only.
nlog() { log "${NODE_NAME:+$NODE_NAME: }$*"; }
nerr() { printf 'kafka.sh: ERROR: %s\n' "${NODE_NAME:+$NODE_NAME: }$*" >&2; }

# Nodes `down` and `status` look at: 1..KAFKA_NODES, or more if the storage was formatted for more.
known_nodes() {
    local count="$NODES" formatted=""
    if ((NODES > 1)) && [[ -s "$NODE_COUNT_FILE" ]]; then
        formatted="$(cat "$NODE_COUNT_FILE")"
        [[ "$formatted" =~ ^[0-9]+$ ]] && ((formatted > count)) && count="$formatted"
    fi
    seq 1 "$count"
}

require_node() {
    if ! [[ "${1:-}" =~ ^[1-9]$ ]] || (($1 > NODES)); then
        die "expected a node number from 1 to $NODES (KAFKA_NODES=$NODES), got '${1:-}'"
    fi
}

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

# probe [BOOTSTRAP [MIN_BROKERS [NODE_ID]]]: succeeds when the bootstrap servers answer a Kafka
# metadata request listing >= MIN_BROKERS (default 1) live brokers, including NODE_ID if given.
probe() {
    local bs="${1:-$BOOTSTRAP}" min="${2:-1}" node="${3:--1}"
    choose_probe
    if [[ "$PROBE_KIND" == python ]]; then
        # Asks the bootstrap servers themselves (the first that answers), never another broker
        # from their answer: a node's probe must not pass because some other node answered.
        timeout 20 "$PY" - "$bs" "$min" "$node" >/dev/null 2>&1 <<'PYEOF'
import asyncio, sys
from aiokafka.client import AIOKafkaClient

async def main(bs, min_brokers, node_id):
    client = AIOKafkaClient(bootstrap_servers=bs, request_timeout_ms=5000)
    try:
        await client.bootstrap()  # one MetadataRequest, to the bootstrap servers in turn
        ids = {broker.nodeId for broker in client.cluster.brokers()}
        if len(ids) < min_brokers or (node_id >= 0 and node_id not in ids):
            sys.exit(1)
    finally:
        await client.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
PYEOF
    else
        [[ -f "$STAMP" ]] || return 1
        [[ -f "$TOOLS_LOG4J" ]] || write_tools_config
        local cfg="$KDIR/probe-client.properties"
        printf 'request.timeout.ms=5000\ndefault.api.timeout.ms=8000\n' >"$cfg"
        local out
        out="$(timeout 30 "$JAVA" -Xmx128m -cp "$LIBS/*" \
            -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
            org.apache.kafka.tools.BrokerApiVersionsCommand \
            --bootstrap-server "$bs" --command-config "$cfg" 2>/dev/null)" || return 1
        # One "host:port (id: N rack: ...) -> (" line per broker it reached ("-> ERROR: ..." if not).
        local ids
        ids="$(grep -v -- '-> ERROR' <<<"$out" | grep -o '(id: [0-9]*' | sort -u || true)"
        [[ -n "$ids" ]] && (($(wc -l <<<"$ids") >= min)) || return 1
        ((node < 0)) || grep -qx "(id: $node" <<<"$ids"
    fi
}

# ---------------------------------------------------------------- process helpers

# True while the process exists and is not a zombie (a killed JVM stays a zombie until init reaps it).
pid_alive() {
    local state
    state="$(sed -n 's/^.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

managed_pid() {
    # Prints the pid from the selected node's pid file if that process is alive and is that node's Kafka.
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $PROPS" || return 1
    echo "$pid"
}

declare -A LOG_START_LINE=()  # per node: server.log line count before this start, to pick out this run's errors

show_log_tail() {
    local f="$LOGS/server.log"
    if [[ -s "$f" ]]; then
        local errs
        errs="$(tail -n +"$((${LOG_START_LINE[$NODE]:-0} + 1))" "$f" | grep -E '^\[[^]]*\] (ERROR|FATAL) |^Caused by:' | tail -n 15 || true)"
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

write_tools_config() {
    mkdir -p "$KDIR"
    cat >"$TOOLS_LOG4J" <<'EOF'
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

# server.properties and log4j2.properties of the selected node.
write_node_config() {
    mkdir -p "$DATA" "$LOGS"
    local about quorum rf isr
    rf=$((NODES < 3 ? NODES : 3))
    isr=$((rf > 1 ? rf - 1 : 1))
    if ((NODES == 1)); then
        about="Single-node KRaft, combined broker+controller, dynamic quorum (formatted with --standalone)."
        quorum="controller.quorum.bootstrap.servers=$HOST:$NODE_CONTROLLER_PORT"
    else
        about="Node $NODE of a $NODES-node KRaft cluster, combined broker+controller, static quorum of all $NODES nodes."
        quorum="controller.quorum.voters=$VOTERS"
    fi
    cat >"$PROPS" <<EOF
# Generated by scripts/kafka.sh - edits are overwritten on every 'up'.
# $about
process.roles=broker,controller
node.id=$NODE
$quorum
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$NODE_PORT,CONTROLLER://$HOST:$NODE_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$NODE_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT

log.dirs=$DATA
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
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
}

# A cluster's storage is formatted for one voter set: refuse to mix node counts on the same data.
check_node_count() {
    ((NODES > 1)) || return 0
    local formatted
    formatted="$(cat "$NODE_COUNT_FILE" 2>/dev/null || true)"
    if [[ -n "$formatted" && "$formatted" != "$NODES" ]] && compgen -G "$KDIR/node-*/data/meta.properties" >/dev/null; then
        die "the cluster in $KDIR was formatted for $formatted nodes: use KAFKA_NODES=$formatted, or wipe it first (KAFKA_NODES=$formatted scripts/kafka.sh wipe)"
    fi
}

CLUSTER_ID=""

cluster_id() {
    [[ -n "$CLUSTER_ID" ]] && return 0
    if [[ -s "$CLUSTER_ID_FILE" ]]; then
        CLUSTER_ID="$(cat "$CLUSTER_ID_FILE")"
    else
        CLUSTER_ID="$("$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
            kafka.tools.StorageTool random-uuid)"
        echo "$CLUSTER_ID" >"$CLUSTER_ID_FILE"
    fi
    if ((NODES > 1)); then echo "$NODES" >"$NODE_COUNT_FILE"; fi
}

# Format the selected node's storage unless it already is. A single node is a dynamic quorum of
# one (--standalone); cluster nodes get no quorum flag, their voters are in server.properties.
format_node() {
    [[ -f "$DATA/meta.properties" ]] && return 0
    cluster_id
    local quorum_flags=()
    if ((NODES == 1)); then quorum_flags=(--standalone); fi
    nlog "formatting storage (cluster id $CLUSTER_ID)..."
    if ! "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
        kafka.tools.StorageTool format "${quorum_flags[@]}" --ignore-formatted \
        --cluster-id "$CLUSTER_ID" --config "$PROPS" >"$LOGS/format.log" 2>&1; then
        cat "$LOGS/format.log" >&2
        die "${NODE_NAME:+$NODE_NAME: }storage format failed (to start over: $SELF wipe)"
    fi
}

# Start the selected node in the background; returns once its pid file is written.
start_node() {
    nlog "starting broker..."
    : >"$LOGS/kafka.out"
    LOG_START_LINE[$NODE]=0
    if [[ -f "$LOGS/server.log" ]]; then LOG_START_LINE[$NODE]="$(wc -l <"$LOGS/server.log")"; fi
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

# wait_ready MIN_BROKERS NODE...: wait until each node's port answers a metadata request that lists
# that node (registered and unfenced) among at least MIN_BROKERS live brokers.
wait_ready() {
    local min="$1"
    shift
    local pending=("$@") still n
    if ((NODES == 1)); then
        log "waiting for broker on $BOOTSTRAP (up to ${WAIT_S}s, probe: $PROBE_KIND)..."
    else
        log "waiting for node(s) $* to answer as live brokers, $min or more in all (up to ${WAIT_S}s, probe: $PROBE_KIND)..."
    fi
    local deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        still=()
        for n in "${pending[@]}"; do
            select_node "$n"
            if ! managed_pid >/dev/null; then
                nerr "the broker process exited during startup"
                show_log_tail
                if ((NODES > 1)); then log "the other nodes were left running: '$SELF down' stops them" >&2; fi
                exit 1
            fi
            if ! { port_open "$HOST" "$NODE_PORT" && probe "$NODE_BOOTSTRAP" "$min" "$NODE"; }; then
                still+=("$n")
            fi
        done
        ((${#still[@]} == 0)) && return 0
        pending=("${still[@]}")
        sleep 1
    done
    for n in "${pending[@]}"; do
        select_node "$n"
        if ((NODES == 1)); then
            nerr "broker did not answer a metadata request on $NODE_BOOTSTRAP within ${WAIT_S}s"
        else
            nerr "broker did not answer a metadata request on $NODE_BOOTSTRAP listing itself among $min or more live brokers within ${WAIT_S}s"
        fi
        show_log_tail
        echo "kafka.sh: ${NODE_NAME:+$NODE_NAME: }the broker process ($(cat "$PIDFILE" 2>/dev/null)) was left running: '$SELF up' waits for it again, '$SELF down' stops it" >&2
    done
    exit 1
}

# stop_nodes TERM|KILL NODE...: signal the nodes all at once, then wait until their processes are
# gone. KILL is a crash. TERM is a graceful shutdown, with SIGKILL after STOP_WAIT_S; but a node's
# controlled shutdown needs a majority of the cluster's nodes (the controller quorum) running, so
# once fewer are left, the nodes still stopping get QUORUM_GRACE_S. (A whole cluster always loses
# its quorum before its last node is done: one at a time, or all at once as here.)
stop_nodes() {
    local sig="$1" n pid deadline alive voters others quorum_lost=0
    shift
    local -A pid_of=()
    for n in "$@"; do
        select_node "$n"
        if ! pid="$(managed_pid)"; then
            nlog "not running"
            rm -f "$PIDFILE"
            continue
        fi
        if [[ "$sig" == KILL ]]; then
            nlog "killing broker (SIGKILL, pid $pid)..."
        else
            nlog "stopping broker (pid $pid)..."
        fi
        kill -"$sig" "$pid" 2>/dev/null || true
        pid_of[$n]="$pid"
    done
    voters="$(known_nodes | wc -l)"
    others="$(count_running "${!pid_of[@]}")"

    deadline=$((SECONDS + STOP_WAIT_S))
    while ((SECONDS < deadline)); do
        alive=0
        for n in "${!pid_of[@]}"; do
            if pid_alive "${pid_of[$n]}"; then alive=$((alive + 1)); fi
        done
        ((alive > 0)) || break
        if ((voters > 1 && !quorum_lost && others + alive <= voters / 2)); then
            quorum_lost=1
            ((SECONDS + QUORUM_GRACE_S >= deadline)) || deadline=$((SECONDS + QUORUM_GRACE_S))
        fi
        sleep 0.2
    done

    for n in $(printf '%s\n' "${!pid_of[@]}" | sort -n); do
        select_node "$n"
        pid="${pid_of[$n]}"
        if pid_alive "$pid"; then
            if ((quorum_lost)); then
                nlog "broker cannot finish a controlled shutdown with a minority of the $voters nodes left: sending SIGKILL"
            else
                nlog "broker did not stop within ${STOP_WAIT_S}s: sending SIGKILL"
            fi
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while pid_alive "$pid" && ((SECONDS < deadline)); do
                sleep 0.2
            done
            if pid_alive "$pid"; then die "${NODE_NAME:+$NODE_NAME: }process $pid survived SIGKILL"; fi
        fi
        if [[ "$sig" == KILL ]]; then nlog "killed"; else nlog "stopped"; fi
        rm -f "$PIDFILE"
    done
}

# count_running [EXCEPT...]: how many of the known nodes, EXCEPT those, are running. Run it in
# $(...): it selects other nodes.
count_running() {
    local n count=0
    for n in $(known_nodes); do
        [[ " $* " == *" $n "* ]] && continue
        select_node "$n"
        if managed_pid >/dev/null; then count=$((count + 1)); fi
    done
    echo "$count"
}

# "pid P" or "pids P1 P2 ..." of the given nodes; run it in $(...): it selects other nodes.
pids_of() {
    local n pids=()
    for n in "$@"; do
        select_node "$n"
        pids+=("$(cat "$PIDFILE" 2>/dev/null || echo '?')")
    done
    if (($# == 1)); then echo "pid ${pids[0]}"; else echo "pids ${pids[*]}"; fi
}

# ---------------------------------------------------------------- subcommands

# Empty, or every server in it is one of this script's nodes.
is_local_bootstrap() {
    local server n found
    local -a servers
    IFS=, read -r -a servers <<<"${1:-}"
    for server in "${servers[@]}"; do
        server="${server// /}"
        [[ -z "$server" ]] && continue
        found=0
        for ((n = 1; n <= NODES; n++)); do
            case "$server" in
                "localhost:$(node_port "$n")" | "$HOST:$(node_port "$n")") found=1 ;;
            esac
        done
        ((found)) || return 1
    done
    return 0
}

cmd_up() {
    local ext="${LANEWAY_KAFKA_BOOTSTRAP:-}"
    if ! is_local_bootstrap "$ext"; then
        log "LANEWAY_KAFKA_BOOTSTRAP=$ext: using that external broker, not starting a local one"
        return 0
    fi
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Kafka 4.x needs Java 17+)"
    mkdir -p "$KDIR"
    choose_probe

    local n all=() to_start=()
    for ((n = 1; n <= NODES; n++)); do
        all+=("$n")
        select_node "$n"
        mkdir -p "$LOGS"
        managed_pid >/dev/null && continue
        rm -f "$PIDFILE"
        if port_open "$HOST" "$NODE_PORT"; then
            if ((NODES > 1)); then
                die "port $NODE_PORT of node $n is in use by a process this script did not start (a single-node broker? 'scripts/kafka.sh down'); or pick another LANEWAY_KAFKA_PORT"
            fi
            if [[ "$PROBE_KIND" == java ]]; then fetch_jars; fi  # the Java probe needs the jars
            if probe; then
                log "a Kafka broker not started by this script already answers on $BOOTSTRAP: using it"
                return 0
            fi
            die "port $PORT is in use by something that does not answer Kafka metadata requests"
        fi
        to_start+=("$n")
    done

    if ((${#to_start[@]} == 0)); then
        if port_open "$HOST" "$PORT" && probe "$BOOTSTRAP" "$NODES"; then
            log "Kafka $(kafka_version) already up on $BOOTSTRAP ($(pids_of "${all[@]}"))"
            return 0
        fi
        # Running but not answering yet (e.g. another 'up' in progress): just wait for it.
        wait_ready "$NODES" "${all[@]}"
        log "Kafka $(kafka_version) up on $BOOTSTRAP ($(pids_of "${all[@]}"))"
        return 0
    fi

    local t0=$SECONDS
    fetch_jars
    write_tools_config
    check_node_count
    for n in "${to_start[@]}"; do
        select_node "$n"
        write_node_config
    done
    local formats=()
    for n in "${to_start[@]}"; do
        select_node "$n"
        [[ -f "$DATA/meta.properties" ]] && continue
        cluster_id  # once, before the nodes format in parallel
        format_node &
        formats+=("$!")
    done
    local format_pid failed=0
    for format_pid in "${formats[@]}"; do
        wait "$format_pid" || failed=1
    done
    ((failed == 0)) || exit 1  # format_node printed why
    for n in "${to_start[@]}"; do
        select_node "$n"
        start_node
    done
    wait_ready "$NODES" "${all[@]}"
    log "Kafka $(kafka_version) up on $BOOTSTRAP ($(pids_of "${all[@]}"), $((SECONDS - t0))s)"
}

cmd_down() {
    local wipe=0
    for a in "$@"; do
        case "$a" in
            --wipe) wipe=1 ;;
            *) die "unknown option for down: $a" ;;
        esac
    done
    # shellcheck disable=SC2046
    stop_nodes TERM $(known_nodes)
    ((wipe)) || return 0
    if ((NODES == 1)); then
        select_node 1
        rm -rf "$DATA" "$CLUSTER_ID_FILE"
        log "wiped $DATA"
    else
        rm -rf "$KDIR"/node-*/data "$CLUSTER_ID_FILE" "$NODE_COUNT_FILE"
        log "wiped $KDIR/node-*/data"
    fi
}

cmd_stop_node() {
    require_node "${1:-}"
    stop_nodes TERM "$1"
}

cmd_kill_node() {
    require_node "${1:-}"
    stop_nodes KILL "$1"
}

cmd_start_node() {
    require_node "${1:-}"
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Kafka 4.x needs Java 17+)"
    choose_probe
    select_node "$1"
    local t0=$SECONDS
    if managed_pid >/dev/null; then
        if ! { port_open "$HOST" "$NODE_PORT" && probe "$NODE_BOOTSTRAP" 1 "$NODE"; }; then
            wait_ready 1 "$NODE"
        fi
        nlog "Kafka $(kafka_version) already up on $NODE_BOOTSTRAP ($(pids_of "$NODE"))"
        return 0
    fi
    rm -f "$PIDFILE"
    [[ -f "$DATA/meta.properties" ]] ||
        die "${NODE_NAME:+$NODE_NAME: }no formatted storage in $DATA: start it with '$SELF up' first"
    if port_open "$HOST" "$NODE_PORT"; then
        die "${NODE_NAME:+$NODE_NAME: }port $NODE_PORT is in use by a process this script did not start"
    fi
    # A node only joins once a majority of the nodes (the controller quorum) runs.
    local others voters
    voters="$(known_nodes | wc -l)"
    others="$(count_running "$1")"
    if ((others + 1 <= voters / 2)); then
        die "node $1 cannot join: only $others other of the $voters nodes run, a majority is needed for the controller quorum; start them all with '$SELF up'"
    fi
    fetch_jars
    write_tools_config
    write_node_config
    start_node
    wait_ready 1 "$NODE"
    nlog "Kafka $(kafka_version) up on $NODE_BOOTSTRAP ($(pids_of "$NODE"), $((SECONDS - t0))s)"
}

# Prints one status line for the selected node; returns 0 if it is up.
node_status() {
    local pid
    if pid="$(managed_pid)"; then
        if port_open "$HOST" "$NODE_PORT" && probe "$NODE_BOOTSTRAP" 1 "$NODE"; then
            echo "up: Kafka $(kafka_version) on $NODE_BOOTSTRAP (pid $pid)"
            return 0
        fi
        echo "down: process $pid is running but not answering on $NODE_BOOTSTRAP (starting, or unhealthy: see $LOGS/server.log)"
        return 3
    fi
    if port_open "$HOST" "$NODE_PORT" && probe "$NODE_BOOTSTRAP"; then
        echo "up: a broker not managed by this script answers on $NODE_BOOTSTRAP"
        return 0
    fi
    echo "down"
    return 3
}

cmd_status() {
    local ext="${LANEWAY_KAFKA_BOOTSTRAP:-}"
    if ! is_local_bootstrap "$ext"; then
        if probe "$ext"; then echo "up (external broker $ext)"; return 0; fi
        echo "down (external broker $ext not answering)"
        return 3
    fi
    if ((NODES == 1)); then
        select_node 1
        node_status
        return
    fi
    local n line up=0 total=0 lines=()
    for n in $(known_nodes); do
        select_node "$n"
        total=$((total + 1))
        if line="$(node_status)"; then up=$((up + 1)); fi
        lines+=("node $n: $line")
    done
    if ((up == total)); then
        echo "up: Kafka $(kafka_version) cluster of $total nodes on $BOOTSTRAP"
    elif ((up == 0)); then
        echo "down: none of the $total nodes answers"
    else
        echo "degraded: $up of $total nodes up on $BOOTSTRAP"
    fi
    printf '  %s\n' "${lines[@]}"
    ((up == total)) || return 3
}

cmd_bootstrap() {
    local ext="${LANEWAY_KAFKA_BOOTSTRAP:-}"
    if is_local_bootstrap "$ext"; then echo "$BOOTSTRAP"; else echo "$ext"; fi
}

usage() {
    # The header comment, up to "Needs:".
    awk 'NR == 1 { next } /^# Needs:/ { exit } { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

# Serialise concurrent commands that start or stop nodes (e.g. parallel make targets). fd 9 is
# closed for the brokers.
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
    case "$cmd" in up | down | wipe | stop-node | kill-node | start-node) take_lock ;; esac
    case "$cmd" in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        wipe) cmd_down --wipe ;;
        status) cmd_status "$@" ;;
        bootstrap) cmd_bootstrap ;;
        stop-node) cmd_stop_node "$@" ;;
        kill-node) cmd_kill_node "$@" ;;
        start-node) cmd_start_node "$@" ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
