#!/usr/bin/env bash
# Local Confluent-compatible schema registry (Apicurio Registry 3.0.x, in-memory H2 storage).
#
#   infra/schema_registry.sh start   download the distribution once, start, wait until it answers,
#                                    print the Confluent-compatible base URL   (alias: up)
#   infra/schema_registry.sh stop    stop the registry this script started (SIGTERM, then SIGKILL)
#                                    (alias: down)
#   infra/schema_registry.sh status  exit 0 when the registry answers on 127.0.0.1:$SCHEMA_REGISTRY_PORT
#   infra/schema_registry.sh url     print the base URL for SchemaRegistryClient({'url': ...})
#
# Base URL: http://127.0.0.1:8081/apis/ccompat/v7 (port: SCHEMA_REGISTRY_PORT).
# Storage is in memory: every start begins empty, ids restart at 1.
# Everything lives under .local/schema_registry/ (download/, dist/, logs/, registry.pid).
# Needs java (17+) and, for the first start only, mvn with access to Maven Central.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$ROOT/infra/schema_registry/pom.xml"
SDIR="$ROOT/.local/schema_registry"
DOWNLOAD="$SDIR/download"
DIST="$SDIR/dist"
LOGS="$SDIR/logs"
PIDFILE="$SDIR/registry.pid"
HOST=127.0.0.1
PORT="${SCHEMA_REGISTRY_PORT:-8081}"
BASE_URL="http://$HOST:$PORT/apis/ccompat/v7"
START_TIMEOUT_S="${SCHEMA_REGISTRY_START_TIMEOUT_S:-90}"
STOP_TIMEOUT_S="${SCHEMA_REGISTRY_STOP_TIMEOUT_S:-20}"
HEAP="${SCHEMA_REGISTRY_HEAP:--Xmx384m -Xms64m}"
# Confluent's default is BACKWARD; Apicurio's own default is no rule at all (ccompat reports NONE).
COMPATIBILITY="${SCHEMA_REGISTRY_COMPATIBILITY:-BACKWARD}"

SERVICE_NAME=schema-registry
SERVICE_MATCH="apicurio-registry-app"
# shellcheck source=infra/java_service.sh
source "$ROOT/infra/java_service.sh"

# The HTTP port a running registry process was started with.
pid_port() {
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | sed -n 's/^-Dquarkus\.http\.port=//p' | head -n1
}

# True when GET $BASE_URL/subjects answers 200 within $1 seconds.
answers() {
    local timeout="${1:-3}"
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null -m "$timeout" "$BASE_URL/subjects" 2>/dev/null
    else
        python3 - "$BASE_URL/subjects" "$timeout" <<'PY' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
    fi
}

# The runnable jar inside $DIST (apicurio-registry-app-<version>-runner.jar, with lib/ beside it).
runner_jar() {
    local jars=("$DIST"/apicurio-registry-app-*-runner.jar)
    [[ -f "${jars[0]}" ]] || return 1
    echo "${jars[0]}"
}

ensure_dist() {
    local stamp="$DIST/.pom.sha256" want
    want="$(sha256sum "$POM" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && runner_jar >/dev/null; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found; install Maven (apt-get install -y maven) to download Apicurio Registry"
    log "downloading Apicurio Registry from Maven Central into $DOWNLOAD (once, ~105 MiB)"
    rm -rf "$DOWNLOAD" "$DIST"
    mkdir -p "$DOWNLOAD" "$DIST"
    mvn -B -q -f "$POM" dependency:copy -Dsr.download.dir="$DOWNLOAD" \
        || die "mvn dependency:copy failed (see output above)"
    local tarballs=("$DOWNLOAD"/apicurio-registry-app-*-all.tar.gz)
    [[ -f "${tarballs[0]}" ]] || die "no apicurio-registry-app-*-all.tar.gz in $DOWNLOAD after mvn"
    tar -xzf "${tarballs[0]}" -C "$DIST" || die "could not unpack ${tarballs[0]}"
    runner_jar >/dev/null || die "no apicurio-registry-app-*-runner.jar in ${tarballs[0]}"
    # The tarball is only needed to unpack; keep the disk use to one copy.
    rm -f "${tarballs[0]}"
    echo "$want" >"$stamp"
}

# PUT $BASE_URL/config: set the global compatibility level. The -Dapicurio.rules.global.* default
# is enforced from the first request on, but GET /config reports NONE until a level is PUT.
set_global_compatibility() {
    local body="{\"compatibility\": \"$COMPATIBILITY\"}"
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null -m 5 -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
            -d "$body" "$BASE_URL/config"
    else
        python3 - "$BASE_URL/config" "$body" <<'PY' >/dev/null
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method="PUT",
                             headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
urllib.request.urlopen(req, timeout=5)
PY
    fi
}

port_taken() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null
}

cmd_start() {
    local pid
    if pid="$(our_pid)"; then
        local running_port
        running_port="$(pid_port "$pid")"
        [[ "$running_port" == "$PORT" ]] \
            || die "the registry this script started (pid $pid) listens on port ${running_port:-?}, not $PORT; run '$0 stop' first"
        if answers 5; then
            log "already running (pid $pid); base URL $BASE_URL"
            return 0
        fi
        log "process $pid is alive but not answering yet; waiting"
    else
        rm -f "$PIDFILE"
        if answers 3; then
            log "a registry not started by this script already answers; reusing it; base URL $BASE_URL"
            return 0
        fi
        port_taken && die "something else listens on $HOST:$PORT (not a ccompat registry); set SCHEMA_REGISTRY_PORT or free the port"
        command -v java >/dev/null || die "java not found; install a JRE 17+ (apt-get install -y openjdk-17-jre-headless)"
        ensure_dist
        local jar
        jar="$(runner_jar)"
        mkdir -p "$LOGS"
        log "starting $(basename "$jar") on $HOST:$PORT, log $LOGS/registry.log"
        # setsid: the registry outlives this shell and is not hit by a Ctrl-C sent to `make`.
        # In-memory H2 (Apicurio's default storage); small JDBC pool; no per-request access log.
        # shellcheck disable=SC2086
        (cd "$SDIR" && exec setsid nohup java $HEAP -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
            -Dquarkus.http.host="$HOST" -Dquarkus.http.port="$PORT" \
            -Dquarkus.http.access-log.enabled=false \
            -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2 \
            -Dapicurio.datasource.jdbc.initial-size=2 -Dapicurio.datasource.jdbc.min-size=2 \
            -Dapicurio.datasource.jdbc.max-size=20 \
            -Dapicurio.ccompat.use-canonical-hash=true \
            -Dapicurio.rules.global.compatibility="$COMPATIBILITY" \
            -jar "$jar" \
            >"$LOGS/registry.log" 2>&1 </dev/null) &
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    await_start "$pid" "$LOGS/registry.log" "$BASE_URL/subjects"
    set_global_compatibility || die "registry answers but PUT $BASE_URL/config failed (log: $LOGS/registry.log)"
    log "up (pid $pid, global compatibility $COMPATIBILITY); base URL $BASE_URL"
}

cmd_stop() {
    stop_ours
}

cmd_status() {
    status_of "base URL $BASE_URL, log $LOGS/registry.log"
}

case "${1:-}" in
    start | up) cmd_start ;;
    stop | down) cmd_stop ;;
    status) cmd_status ;;
    url) echo "$BASE_URL" ;;
    *) echo "usage: $0 start|stop|status|url   (aliases: up = start, down = stop)" >&2; exit 2 ;;
esac
