#!/usr/bin/env bash
# Start the local services (PostgreSQL on 127.0.0.1:5432, Kafka on 127.0.0.1:9092, a
# Confluent-compatible schema registry on 127.0.0.1:8081, Cassandra on 127.0.0.1:9042). Idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/postgres.sh" up
"$here/kafka.sh" up
"$here/schema_registry.sh" up
"$here/cassandra.sh" up
