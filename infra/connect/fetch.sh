#!/usr/bin/env bash
# Copy the runtime dependencies of a Kafka Connect classpath pom (a child of infra/connect/pom.xml)
# into a lib folder, once per content of both poms. Needs mvn and Maven Central the first time.
#
#   infra/connect/fetch.sh POM LIB
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
POM="$(realpath "$1")"; LIB="$(realpath -m "$2")"
want="$(cat "$ROOT/infra/connect/pom.xml" "$POM" | sha256sum | cut -d' ' -f1)"
if [[ -f "$LIB/.pom.sha256" && "$(cat "$LIB/.pom.sha256")" == "$want" ]]; then
    exit 0
fi
command -v mvn >/dev/null || { echo "connect: mvn not found (apt-get install -y maven)" >&2; exit 1; }
echo "connect: downloading the jars of $POM from Maven Central into $LIB (once)" >&2
rm -rf "$LIB" && mkdir -p "$LIB"
mvn -B -q -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIB"
echo "$want" >"$LIB/.pom.sha256"
