#!/usr/bin/env bash
# Copy the Kafka Connect + Debezium JDBC sink jars (pom.xml, a child of infra/connect/pom.xml) into
# .local/jdbc_sink/lib, once per pom version. Needs mvn and Maven Central the first time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
exec "$ROOT/infra/connect/fetch.sh" "$ROOT/benchmarks/jdbc_sink/pom.xml" "$ROOT/.local/jdbc_sink/lib"
