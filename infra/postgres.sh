#!/usr/bin/env bash
# Local PostgreSQL for development and tests, on 127.0.0.1:5432 with DEV-ONLY credentials
# postgres/postgres (DSN postgresql://postgres:postgres@127.0.0.1:5432/postgres).
#
#   infra/postgres.sh up      reuse a server that already accepts the dev credentials; otherwise
#                             install Debian's postgresql package if missing, start the cluster on
#                             port 5432, set the postgres password and test-box settings
#   infra/postgres.sh down    stop the cluster only if this script started it (marker file)
#   infra/postgres.sh status  exit 0 when the dev DSN connects
#
# The cluster itself is Debian's (data /var/lib/postgresql/<ver>/<name>, log
# /var/log/postgresql/postgresql-<ver>-<name>.log); .local/postgres/ holds only the marker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.local/postgres"
MARKER="$STATE/started-by-project"
HOST=127.0.0.1
PORT=5432
DEV_USER=postgres
DEV_PASSWORD=postgres
DSN="postgresql://$DEV_USER:$DEV_PASSWORD@$HOST:$PORT/postgres"
START_TIMEOUT_S="${PG_START_TIMEOUT_S:-60}"
# Test-box settings (name=value). The replicator opens one connection per shard (64) plus tests.
SETTINGS=(max_connections=300 shared_buffers=256MB)

log() { echo "postgres: $*"; }
die() { echo "postgres: ERROR: $*" >&2; exit 1; }

# True when the dev DSN connects and runs a query.
answers() {
    local py="$ROOT/.venv/bin/python"
    if [[ -x "$py" ]] && "$py" -c 'import psycopg' 2>/dev/null; then
        "$py" - "$DSN" <<'PY' >/dev/null 2>&1
import sys
import psycopg
with psycopg.connect(sys.argv[1], connect_timeout=3) as conn:
    conn.execute("select 1").fetchone()
PY
    elif command -v psql >/dev/null; then
        PGPASSWORD="$DEV_PASSWORD" PGCONNECT_TIMEOUT=3 \
            psql -h "$HOST" -p "$PORT" -U "$DEV_USER" -d postgres -XtAqc 'select 1' >/dev/null 2>&1
    else
        return 1
    fi
}

# "<version> <name> <status>" of the cluster on $PORT (pg_lsclusters), empty if none.
find_cluster() {
    pg_lsclusters --no-header 2>/dev/null | awk -v port="$PORT" '$3 == port { print $1, $2, $4; exit }'
}

ensure_installed() {
    command -v pg_lsclusters >/dev/null && return 0
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "PostgreSQL is not installed; install it by hand (Debian/Ubuntu: sudo apt-get install -y postgresql; or any PostgreSQL 15+ on 127.0.0.1:5432 with user/password postgres/postgres)"
    fi
    log "installing Debian package postgresql (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    command -v pg_lsclusters >/dev/null || die "apt-get install postgresql did not provide pg_lsclusters"
}

# psql as the cluster owner over the Unix socket (peer authentication).
as_owner_psql() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u postgres -- psql -p "$PORT" -d postgres -XtAq "$@"
    elif [[ "$(id -un)" == postgres ]]; then
        psql -p "$PORT" -d postgres -XtAq "$@"
    else
        die "need root (or the postgres user) to configure the cluster; run as root or set the password by hand: ALTER ROLE postgres PASSWORD 'postgres'"
    fi
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until as_owner_psql -c 'select 1' >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "cluster $1 did not accept connections within ${START_TIMEOUT_S}s (log: /var/log/postgresql/postgresql-${1// /-}.log)"
        sleep 0.5
    done
}

configure() {
    local ver="$1" name="$2" restart=0 setting key value current
    as_owner_psql -c "ALTER ROLE $DEV_USER PASSWORD '$DEV_PASSWORD'" >/dev/null
    for setting in "${SETTINGS[@]}"; do
        key="${setting%%=*}"
        value="${setting#*=}"
        # current_setting() reports in the unit written here (300, 256MB).
        current="$(as_owner_psql -c "SELECT current_setting('$key') = '$value'")"
        if [[ "$current" != t ]]; then
            log "setting $key = $value (ALTER SYSTEM)"
            as_owner_psql -c "ALTER SYSTEM SET $key = '$value'" >/dev/null
            restart=1
        fi
    done
    if ((restart)); then
        log "restarting cluster $ver/$name to apply settings"
        pg_ctlcluster "$ver" "$name" restart
        wait_ready "$ver $name"
    fi
}

cmd_up() {
    if answers; then
        if [[ -f "$MARKER" ]]; then
            log "already running (started by this project: $(cat "$MARKER")) on $HOST:$PORT; nothing to do"
        else
            log "a server already accepts the dev credentials on $HOST:$PORT; reusing it"
        fi
        return 0
    fi
    ensure_installed
    local cluster ver name status
    cluster="$(find_cluster)"
    if [[ -z "$cluster" ]]; then
        [[ "$(id -u)" -eq 0 ]] || die "no PostgreSQL cluster on port $PORT; create one by hand (pg_createcluster <version> main -p $PORT)"
        ver="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
        log "no cluster on port $PORT; creating $ver/main"
        pg_createcluster "$ver" main -p "$PORT" >/dev/null
        cluster="$(find_cluster)"
    fi
    read -r ver name status <<<"$cluster"
    if [[ "$status" != online ]]; then
        log "starting cluster $ver/$name on port $PORT"
        pg_ctlcluster "$ver" "$name" start
        mkdir -p "$STATE"
        echo "$ver $name" >"$MARKER"
    else
        log "cluster $ver/$name is running but rejects the dev credentials; configuring it"
    fi
    wait_ready "$ver $name"
    configure "$ver" "$name"
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until answers; do
        ((SECONDS < deadline)) || die "$DSN does not connect (check pg_hba.conf allows 127.0.0.1 with scram-sha-256/md5; log: /var/log/postgresql/postgresql-$ver-$name.log)"
        sleep 0.5
    done
    log "up: $DSN (cluster $ver/$name)"
}

cmd_down() {
    if [[ ! -f "$MARKER" ]]; then
        log "no cluster started by this project; leaving any running server alone"
        return 0
    fi
    local ver name
    read -r ver name <"$MARKER"
    if pg_lsclusters --no-header 2>/dev/null | awk -v v="$ver" -v n="$name" '$1 == v && $2 == n && $4 == "online" { found = 1 } END { exit !found }'; then
        log "stopping cluster $ver/$name"
        pg_ctlcluster "$ver" "$name" stop -m fast
    else
        log "cluster $ver/$name is already stopped"
    fi
    rm -f "$MARKER"
    log "stopped"
}

cmd_status() {
    if answers; then
        if [[ -f "$MARKER" ]]; then
            log "running (started by this project: $(cat "$MARKER")): $DSN"
        else
            log "running (not started by this project): $DSN"
        fi
        return 0
    fi
    log "not answering on $DSN"
    return 3
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
