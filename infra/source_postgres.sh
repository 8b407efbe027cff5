#!/usr/bin/env bash
# A second local PostgreSQL cluster, the SOURCE of the live Debezium chain (infra/debezium.sh,
# `make e2e`): Debian cluster `<ver> source` on 127.0.0.1:5433 with wal_level=logical, DEV-ONLY
# credentials postgres/postgres (DSN postgresql://postgres:postgres@127.0.0.1:5433/postgres).
# A cluster of its own keeps logical decoding (and the WAL that replication slots retain) off the
# target on 5432.
#
#   infra/source_postgres.sh up      create the cluster once (needs root and Debian's postgresql
#                                    package, which infra/postgres.sh installs), configure it,
#                                    start it, wait until the dev DSN connects
#   infra/source_postgres.sh down    stop the cluster if this script started it (data is kept)
#   infra/source_postgres.sh status  exit 0 when the dev DSN connects with wal_level=logical
#
# Data /var/lib/postgresql/<ver>/source, log /var/log/postgresql/postgresql-<ver>-source.log;
# .local/source_postgres/ holds only the marker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.local/source_postgres"
MARKER="$STATE/started-by-project"
NAME=source
HOST=127.0.0.1
PORT="${SOURCE_PG_PORT:-5433}"
DEV_USER=postgres
DEV_PASSWORD=postgres
DSN="postgresql://$DEV_USER:$DEV_PASSWORD@$HOST:$PORT/postgres"
START_TIMEOUT_S="${PG_START_TIMEOUT_S:-60}"
# Logical decoding for Debezium's pgoutput slots; a bound on the WAL a forgotten slot can keep.
SETTINGS=(
    "listen_addresses = '$HOST'"
    "wal_level = logical"
    "max_replication_slots = 20"
    "max_wal_senders = 20"
    "max_slot_wal_keep_size = '2GB'"
    "max_connections = 100"
    "shared_buffers = '128MB'"
)

log() { echo "source-postgres: $*"; }
die() { echo "source-postgres: ERROR: $*" >&2; exit 1; }

# True when the dev DSN connects and the server decodes logically.
answers() {
    PGPASSWORD="$DEV_PASSWORD" PGCONNECT_TIMEOUT=3 \
        psql -h "$HOST" -p "$PORT" -U "$DEV_USER" -d postgres -XtAqc 'SHOW wal_level' 2>/dev/null \
        | grep -qx logical
}

# "<version> <status>" of the cluster named $NAME, empty if none.
find_cluster() {
    pg_lsclusters --no-header 2>/dev/null | awk -v name="$NAME" '$2 == name { print $1, $4; exit }'
}

as_owner_psql() {
    runuser -u postgres -- psql -p "$PORT" -d postgres -XtAq "$@"
}

cmd_up() {
    if answers; then
        log "already running on $HOST:$PORT (wal_level=logical); nothing to do"
        return 0
    fi
    command -v pg_lsclusters >/dev/null \
        || die "PostgreSQL is not installed; run infra/postgres.sh up first (it installs Debian's postgresql)"
    [[ "$(id -u)" -eq 0 ]] || die "need root to create and configure cluster '$NAME' (pg_createcluster)"
    local cluster ver status
    cluster="$(find_cluster)"
    if [[ -z "$cluster" ]]; then
        ver="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
        log "creating cluster $ver/$NAME on port $PORT"
        pg_createcluster "$ver" "$NAME" -p "$PORT" >/dev/null
        cluster="$(find_cluster)"
    fi
    read -r ver status <<<"$cluster"
    local conf="/etc/postgresql/$ver/$NAME/conf.d/cdc-source.conf"
    printf '%s\n' "# Written by infra/source_postgres.sh; rewritten on every 'up'." "${SETTINGS[@]}" \
        >"$conf.new"
    if ! cmp -s "$conf.new" "$conf"; then
        mv "$conf.new" "$conf"
        chown postgres:postgres "$conf"
        if [[ "$status" == online ]]; then
            log "settings changed; restarting cluster $ver/$NAME"
            pg_ctlcluster "$ver" "$NAME" restart
        fi
    else
        rm -f "$conf.new"
    fi
    if [[ "$status" != online ]]; then
        log "starting cluster $ver/$NAME on port $PORT"
        pg_ctlcluster "$ver" "$NAME" start
        mkdir -p "$STATE"
        echo "$ver $NAME" >"$MARKER"
    fi
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until as_owner_psql -c 'select 1' >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "cluster $ver/$NAME did not start within ${START_TIMEOUT_S}s (log: /var/log/postgresql/postgresql-$ver-$NAME.log)"
        sleep 0.5
    done
    as_owner_psql -c "ALTER ROLE $DEV_USER PASSWORD '$DEV_PASSWORD'" >/dev/null
    answers || die "$DSN does not connect with wal_level=logical (log: /var/log/postgresql/postgresql-$ver-$NAME.log)"
    log "up: $DSN (cluster $ver/$NAME, wal_level=logical)"
}

cmd_down() {
    if [[ ! -f "$MARKER" ]]; then
        log "no source cluster started by this project; leaving any running server alone"
        return 0
    fi
    local ver name
    read -r ver name <"$MARKER"
    if [[ "$(find_cluster)" == "$ver online" ]]; then
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
        log "running: $DSN (wal_level=logical)"
        return 0
    fi
    log "not answering on $DSN (or wal_level is not logical)"
    return 3
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
