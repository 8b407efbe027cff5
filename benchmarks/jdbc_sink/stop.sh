#!/usr/bin/env bash
# Stop the Kafka Connect worker that start.sh started in WORKDIR (SIGTERM, then SIGKILL).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
exec "$ROOT/infra/connect/stop.sh" "$1"
