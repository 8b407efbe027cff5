#!/usr/bin/env bash
# Stop the Kafka Connect worker that infra/connect/start.sh started in WORKDIR (SIGTERM, then
# SIGKILL after 30 s).
#
#   infra/connect/stop.sh WORKDIR
set -euo pipefail
WORK="$1"
[[ -f "$WORK/connect.pid" ]] || exit 0
pid="$(cat "$WORK/connect.pid")"
if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q ConnectStandalone; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
fi
rm -f "$WORK/connect.pid"
