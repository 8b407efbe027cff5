# Shared by infra/kafka.sh, infra/schema_registry.sh and infra/cassandra.sh (sourced, not run):
# the pidfile bookkeeping, jars, stop and status of a Java service this project starts in the
# background.
# The sourcing script sets SERVICE_NAME (prefix of every line printed), PIDFILE, STOP_TIMEOUT_S,
# SERVICE_MATCH (a pattern the service's command line matches) and defines answers() (true when
# the service responds).

log() { echo "$SERVICE_NAME: $*"; }
die() { echo "$SERVICE_NAME: ERROR: $*" >&2; exit 1; }

# PID of the process the sourcing script started, if that process is still alive.
our_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$SERVICE_MATCH" || return 1
    echo "$pid"
}

# Wait until process $1 answers (START_TIMEOUT_S); die with the tail of log $2 if it exits or
# stays silent. $3 names where it should answer.
await_start() {
    local pid="$1" logfile="$2" where="$3"
    local deadline=$((SECONDS + START_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            log_tail "$logfile"
            die "process $pid exited during startup (log: $logfile)"
        fi
        answers 2 && return 0
        sleep 0.5
    done
    log_tail "$logfile"
    die "no answer on $where within ${START_TIMEOUT_S}s (pid $pid still running; log: $logfile; stop it with $0 down)"
}

# Stop what the sourcing script started: SIGTERM, then SIGKILL after STOP_TIMEOUT_S.
stop_ours() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$PIDFILE"
        log "not running (nothing started by this script)"
        return 0
    fi
    log "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_S))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still running after ${STOP_TIMEOUT_S}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    rm -f "$PIDFILE"
    log "stopped"
}

# Exit status 0 when the service answers, 3 when not; $1 describes where (address, log).
status_of() {
    local where="$1" pid=""
    pid="$(our_pid)" || pid=""
    if answers 3; then
        if [[ -n "$pid" ]]; then
            log "running (pid $pid); $where"
        else
            log "one not started by this script answers; $where"
        fi
        return 0
    fi
    if [[ -n "$pid" ]]; then
        log "process $pid is alive but does not answer; $where"
    else
        log "not running"
    fi
    return 3
}

# The last lines of a log file, on stderr.
log_tail() {
    echo "---- last lines of $1 ----" >&2
    tail -n 40 "$1" >&2 2>/dev/null || true
}

# Copy the jars of $POM (and their dependencies) into $LIB once per version of the pom; $1 names
# them in messages ("Kafka", "Cassandra").
ensure_lib() {
    local what="$1"
    local stamp="$LIB/.pom.sha256" want
    want="$(sha256sum "$POM" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found; install Maven (apt-get install -y maven) to download the $what jars"
    log "downloading $what jars from Maven Central into $LIB (once)"
    rm -rf "$LIB"
    mkdir -p "$LIB"
    mvn -B -q -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIB" \
        || die "mvn dependency:copy-dependencies failed (see output above)"
    echo "$want" >"$stamp"
}
