#!/usr/bin/env bash
# Stop the local services that the project started; servers it only reused are left alone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rc=0
"$here/cassandra.sh" down || rc=1
"$here/debezium.sh" down || rc=1
"$here/source_postgres.sh" down || rc=1
"$here/schema_registry.sh" down || rc=1
"$here/kafka.sh" down || rc=1
"$here/postgres.sh" down || rc=1
exit "$rc"
