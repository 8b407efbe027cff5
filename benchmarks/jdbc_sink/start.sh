#!/usr/bin/env bash
# Start Kafka Connect standalone with one Debezium JDBC sink connector, in the background.
#
#   start.sh WORKDIR NAME TOPICS_REGEX JDBC_URL [TASKS]
#
# WORKDIR gets worker.properties, connector.properties, log4j.properties, connect.log and
# connect.pid. The connector's consumer group is `connect-NAME`. Stop with stop.sh WORKDIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$1"; NAME="$2"; TOPICS_REGEX="$3"; URL="$4"; TASKS="${5:-1}"
BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
REST_PORT="${CONNECT_REST_PORT:-18083}"
PGUSER="${JDBC_USER:-postgres}"; PGPASS="${JDBC_PASSWORD:-postgres}"
"$ROOT/benchmarks/jdbc_sink/fetch.sh"
mkdir -p "$WORK"
cat >"$WORK/worker.properties" <<PROPS
bootstrap.servers=$BOOTSTRAP
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter.schemas.enable=true
offset.storage.file.filename=$WORK/connect.offsets
offset.flush.interval.ms=1000
listeners=http://127.0.0.1:$REST_PORT
consumer.auto.offset.reset=earliest
PROPS
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
cat >"$WORK/log4j.properties" <<PROPS
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$WORK/connect.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.hibernate=WARN
log4j.logger.com.mchange=WARN
PROPS
nohup java -Xms512m -Xmx1g -Dlog4j.configuration="file:$WORK/log4j.properties" \
    -cp "$ROOT/.local/jdbc_sink/lib/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$WORK/worker.properties" "$WORK/connector.properties" >"$WORK/stdout.log" 2>&1 &
echo $! >"$WORK/connect.pid"
echo "jdbc_sink: started pid $(cat "$WORK/connect.pid"), log $WORK/connect.log"
