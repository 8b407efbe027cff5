#!/usr/bin/env bash
# Local Prometheus (Debian's `prometheus` package: prometheus and promtool) for the replicator.
#
#   infra/prometheus.sh install  install the package unless promtool and prometheus are there
#                                (apt-get; as root or with passwordless sudo). Idempotent.
#   infra/prometheus.sh check    promtool check rules + promtool test rules (alerts_test.yml)
#   infra/prometheus.sh up       start Prometheus on 127.0.0.1:$PROMETHEUS_PORT (9090) with
#                                infra/prometheus/alerts.yml, scraping the replicator's metrics
#                                port on 127.0.0.1:$REPLICATE_METRICS_PORT (9108)
#   infra/prometheus.sh down     stop the Prometheus this script started
#
# Data, config and log live under .local/prometheus/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RULES="$ROOT/infra/prometheus/alerts.yml"
RULE_TESTS="$ROOT/infra/prometheus/alerts_test.yml"
PDIR="$ROOT/.local/prometheus"
PIDFILE="$PDIR/prometheus.pid"
PORT="${PROMETHEUS_PORT:-9090}"
TARGET="127.0.0.1:${REPLICATE_METRICS_PORT:-9108}"

install() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
        return 0
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo -n true 2>/dev/null || {
            echo "prometheus.sh: run as root, or: sudo apt-get install -y prometheus" >&2
            exit 1
        }
        sudo=(sudo -n)
    fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        prometheus >/dev/null
}

check() {
    promtool check rules "$RULES"
    (cd "$(dirname "$RULE_TESTS")" && promtool test rules "$(basename "$RULE_TESTS")")
}

running() {
    [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

up() {
    running && { echo "prometheus: running on 127.0.0.1:$PORT"; return 0; }
    mkdir -p "$PDIR/data"
    cat >"$PDIR/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
  evaluation_interval: 15s
rule_files:
  - $RULES
scrape_configs:
  - job_name: replicator
    static_configs:
      - targets: ["$TARGET"]
YAML
    prometheus --config.file="$PDIR/prometheus.yml" --storage.tsdb.path="$PDIR/data" \
        --web.listen-address="127.0.0.1:$PORT" >"$PDIR/prometheus.log" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 100); do
        if python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
            "http://127.0.0.1:$PORT/-/ready" 2>/dev/null; then
            echo "prometheus: running on 127.0.0.1:$PORT, scraping $TARGET"
            return 0
        fi
        running || break
        sleep 0.2
    done
    echo "prometheus: did not become ready; see $PDIR/prometheus.log" >&2
    exit 1
}

down() {
    if running; then
        kill "$(cat "$PIDFILE")"
    fi
    rm -f "$PIDFILE"
}

case "${1:-}" in
    install) install ;;
    check) check ;;
    up | start) up ;;
    down | stop) down ;;
    *) echo "usage: $0 install|check|up|down" >&2; exit 2 ;;
esac
