#!/usr/bin/env bash
# Copy the Kafka Connect + Debezium JDBC sink jars (pom.xml) into .local/jdbc_sink/lib, once per
# pom.xml version. Needs mvn and Maven Central the first time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
POM="$ROOT/benchmarks/jdbc_sink/pom.xml"
LIB="$ROOT/.local/jdbc_sink/lib"
want="$(sha256sum "$POM" | cut -d' ' -f1)"
if [[ -f "$LIB/.pom.sha256" && "$(cat "$LIB/.pom.sha256")" == "$want" ]]; then
    exit 0
fi
command -v mvn >/dev/null || { echo "jdbc_sink: mvn not found (apt-get install -y maven)" >&2; exit 1; }
rm -rf "$LIB" && mkdir -p "$LIB"
mvn -B -q -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIB"
echo "$want" >"$LIB/.pom.sha256"
