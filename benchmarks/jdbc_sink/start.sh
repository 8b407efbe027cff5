#!/usr/bin/env bash
# Start Kafka Connect standalone with one Debezium JDBC sink connector, in the background.
#
#   start.sh WORKDIR NAME TOPICS_REGEX JDBC_URL [TASKS]
#
# WORKDIR gets connector.properties and what infra/connect/start.sh writes (worker.properties,
# connect.log, connect.pid). The connector's consumer group is `connect-NAME`. Stop with stop.sh
# WORKDIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$1"; NAME="$2"; TOPICS_REGEX="$3"; URL="$4"; TASKS="${5:-1}"
PGUSER="${JDBC_USER:-postgres}"; PGPASS="${JDBC_PASSWORD:-postgres}"
"$ROOT/benchmarks/jdbc_sink/fetch.sh"
mkdir -p "$WORK"
cat >"$WORK/connector.properties" <<PROPS
name=$NAME
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
tasks.max=$TASKS
topics.regex=$TOPICS_REGEX
connection.url=$URL
connection.username=$PGUSER
connection.password=$PGPASS
insert.mode=upsert
delete.enabled=true
primary.key.mode=record_key
schema.evolution=basic
PROPS
"$ROOT/infra/connect/start.sh" "$WORK" "$ROOT/.local/jdbc_sink/lib" "$WORK/connector.properties"
