#!/usr/bin/env bash
# Local single-node Apache Cassandra 5.0 with CDC enabled, for development and tests.
#
#   infra/cassandra.sh up       download jars once, start, wait until CQL answers on 127.0.0.1:9042
#   infra/cassandra.sh down     stop the node this script started (SIGTERM, then SIGKILL)
#   infra/cassandra.sh status   exit 0 when CQL answers on 127.0.0.1:9042, 3 when not
#   infra/cassandra.sh nodetool ARGS   nodetool over JMX on 127.0.0.1:7199 (e.g. flush, status)
#
# Configuration: infra/cassandra/cassandra.yaml and logback.xml. Everything else lives under
# .local/cassandra/: lib/, data/ (data, commitlog, cdc_raw, saved_caches, hints), logs/,
# triggers/ (empty), cassandra.pid. Needs java 17 and, for the first `up` only, mvn with access
# to Maven Central.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONF="$ROOT/infra/cassandra"
POM="$CONF/pom.xml"
CDIR="$ROOT/.local/cassandra"
LIB="$CDIR/lib"
DATA="$CDIR/data"
LOGS="$CDIR/logs"
TRIGGERS="$CDIR/triggers"
PIDFILE="$CDIR/cassandra.pid"
HOST=127.0.0.1
PORT=9042
JMX_PORT=7199
START_TIMEOUT_S="${CASSANDRA_START_TIMEOUT_S:-180}"
STOP_TIMEOUT_S="${CASSANDRA_STOP_TIMEOUT_S:-60}"
HEAP="${CASSANDRA_HEAP:--Xms512m -Xmx1g}"

SERVICE_NAME=cassandra
SERVICE_MATCH="org\\.apache\\.cassandra\\.service\\.CassandraDaemon"
# shellcheck source=infra/java_service.sh
source "$ROOT/infra/java_service.sh"

# Module access Cassandra needs on Java 17: the JPMS lines of Cassandra's conf/jvm17-server.options
# (5.0 line; the java.nio open of its newest revision included), with its Netty properties.
JVM17_OPTS=(
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
)

# G1 as in jvm17-server.options; a small heap (CASSANDRA_HEAP) for a shared development box.
GC_OPTS=(
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:G1HeapRegionSize=16m -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300
    -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$LOGS" -XX:+ExitOnOutOfMemoryError
)

# Startup of a one-node cluster: no wait for gossip to settle (there are no peers); JMX on
# loopback only, for `infra/cassandra.sh nodetool`.
CASSANDRA_OPTS=(
    -Dcassandra.config="file://$CONF/cassandra.yaml"
    -Dcassandra.storagedir="$DATA"
    -Dcassandra.triggers_dir="$TRIGGERS"
    -Dcassandra.logdir="$LOGS"
    -Dlogback.configurationFile="file://$CONF/logback.xml"
    -Dcassandra-foreground=yes
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.jmx.local.port="$JMX_PORT"
    -Dcom.sun.management.jmxremote.rmi.port="$JMX_PORT"
    -Djava.net.preferIPv4Stack=true
    -Djava.awt.headless=true
)

# True when a CQL query (SELECT release_version FROM system.local) succeeds on 127.0.0.1:9042
# within $1 seconds.
answers() {
    local timeout="${1:-3}"
    local py="$ROOT/.venv/bin/python"
    if [[ -x "$py" ]] && "$py" -c 'import cassandra.cluster' 2>/dev/null; then
        "$py" - "$HOST" "$PORT" "$timeout" <<'PY' >/dev/null 2>&1
import sys
from cassandra.cluster import Cluster
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cluster = Cluster([host], port=port, connect_timeout=timeout, control_connection_timeout=timeout)
try:
    session = cluster.connect()
    row = session.execute("SELECT release_version FROM system.local", timeout=timeout).one()
    sys.exit(0 if row else 1)
finally:
    cluster.shutdown()
PY
    else
        # No driver yet: fall back to "something accepts TCP on the port".
        timeout "$timeout" bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null
    fi
}

cmd_up() {
    local pid
    if pid="$(our_pid)"; then
        if answers 5; then
            log "already running (pid $pid) on $HOST:$PORT; nothing to do"
            return 0
        fi
        log "process $pid is alive but not answering yet; waiting"
    else
        rm -f "$PIDFILE"
        if answers 3; then
            log "a node not started by this script already answers on $HOST:$PORT; reusing it"
            return 0
        fi
        command -v java >/dev/null || die "java not found; install a JRE 17 (apt-get install -y openjdk-17-jre-headless)"
        ensure_lib Cassandra
        mkdir -p "$DATA" "$LOGS" "$TRIGGERS"
        log "starting node on $HOST:$PORT (storage 7000, JMX $JMX_PORT), logs in $LOGS"
        # setsid: the node outlives this shell and is not hit by a Ctrl-C sent to `make`.
        # shellcheck disable=SC2086
        setsid nohup java $HEAP "${GC_OPTS[@]}" "${JVM17_OPTS[@]}" "${CASSANDRA_OPTS[@]}" \
            -cp "$LIB/*" org.apache.cassandra.service.CassandraDaemon \
            >"$LOGS/stdout.log" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    local started=$SECONDS
    await_start "$pid" "$LOGS/system.log" "$HOST:$PORT"
    log "up (pid $pid) on $HOST:$PORT after $((SECONDS - started)) s"
}

cmd_down() {
    stop_ours
}

cmd_status() {
    status_of "$HOST:$PORT, data $DATA, log $LOGS/system.log"
}

# nodetool against the node's loopback JMX port, e.g. `nodetool flush` or `nodetool status`.
cmd_nodetool() {
    [[ -f "$LIB/.pom.sha256" ]] || die "no jars in $LIB yet; run $0 up first"
    java -Xmx256m "${JVM17_OPTS[@]}" -Dcassandra.logdir="$LOGS" \
        -Dlogback.configurationFile="file://$CONF/logback-tools.xml" \
        -cp "$LIB/*" org.apache.cassandra.tools.NodeTool -h "$HOST" -p "$JMX_PORT" "$@"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    nodetool) shift; cmd_nodetool "$@" ;;
    *) echo "usage: $0 up|down|status|nodetool <args>" >&2; exit 2 ;;
esac
