#!/usr/bin/env bash
# What running the CDP services on fewer replicas would buy (docs/architecture.md,
# "Placement"): three nodes of `tandem up` on this machine, through the gateway, saturating
# replayed load with the services
#   all       running on every replica (today's placement);
#   leader    stopped on the two followers (an injected `error` fault: the worker fails at
#             once and is restarted with backoff, so it uses no CPU) — what a leader-only
#             placement would cost the cluster;
#   none      stopped on every replica (the ceiling: ingest alone).
# Before each run every running service has caught up (lag 0), so a run does not pay for
# the previous one's backlog. The rounds alternate, so drift in the machine's load hits
# every placement alike; compare the ratios, not the absolutes.
#
# Usage: tools/bench-placement.sh [EVENTS_PER_RUN] [ROUNDS]      (defaults 300000 2)
# Needs a release build. Data under a temporary directory, removed at the end; only the
# processes this script started are stopped, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
ROUNDS=${2:-2}
TANDEM=${TANDEM:-target/release/tandem}
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh
ADMIN=demo-admin-key-not-secret
SERVICES="traits segments recommendations"
# How long services may take to catch up between runs, in seconds.
CATCH_UP_S_MAX=900

TANDEM_FAULTS__ENABLED=true "$TANDEM" up --data-dir "$WORK/up" --port 0 --no-demo >"$WORK/up.log" 2>&1 &
UP=$!; PIDS+=("$UP")
for _ in $(seq 300); do grep -q "gateway ready" "$WORK/up.log" && break; sleep 0.1; done
GATEWAY=$(grep -o "API (gateway) *http://[0-9.:]*" "$WORK/up.log" | grep -o "http://.*")
[ -n "$GATEWAY" ] || { echo "the cluster did not start:"; cat "$WORK/up.log"; exit 1; }
mapfile -t URLS < <(grep -E "^  node [0-9]" "$WORK/up.log" | awk '{print $3}')
LEADER=""
for _ in $(seq 100); do
    for url in "${URLS[@]}"; do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health/leader")" = 200 ] && LEADER=$url
    done
    [ -n "$LEADER" ] && break; sleep 0.1
done
[ -n "$LEADER" ] || { echo "no leader among ${URLS[*]}"; exit 1; }
echo "nodes: ${URLS[*]}; leader $LEADER"

fault() { # URL FAULT: sets FAULT on every service of the node at URL
    for service in $SERVICES; do
        curl -sf -o /dev/null -X POST "$1/v1/admin/faults/services" -H "Authorization: Bearer $ADMIN" \
            -H 'content-type: application/json' -d "{\"service\":\"$service\",\"fault\":\"$2\"}" ||
            { echo "setting fault $2 on $1 failed"; exit 1; }
    done
}
lag() { # URL: total lag of the node's services
    curl -s -H "Authorization: Bearer $ADMIN" "$1/v1/admin/services" |
        python3 -c 'import json,sys; print(sum(s["lag"] for s in json.load(sys.stdin)["services"]))'
}
caught_up() { # URL...: waits until every named node's services have no lag
    local deadline=$(( $(date +%s) + CATCH_UP_S_MAX ))
    for url in "$@"; do
        until [ "$(lag "$url")" = 0 ]; do
            [ "$(date +%s)" -lt "$deadline" ] || { echo "services of $url did not catch up"; exit 1; }
            sleep 1
        done
    done
}
declare -A RATES
run() { # PLACEMENT SEED
    local placement=$1 running=()
    for url in "${URLS[@]}"; do
        case $placement in
            all) fault "$url" none; running+=("$url") ;;
            leader) if [ "$url" = "$LEADER" ]; then fault "$url" none; running+=("$url"); else fault "$url" error; fi ;;
            none) fault "$url" error ;;
        esac
    done
    [ ${#running[@]} -gt 0 ] && caught_up "${running[@]}"
    out=$("$TANDEM" load --target "$GATEWAY" --write-key demo-write-key-not-secret --events "$EVENTS" \
        --concurrency 64 --batch-size 100 --quiet --seed "$2" --replay)
    rate=$(echo "$out" | awk '/events\/s/ {print $2}')
    echo "$placement: $rate events/s  $(echo "$out" | grep -E "latency" | tr -s ' ')"
    RATES[$placement]="${RATES[$placement]:-} $rate"
}
seed=300
for round in $(seq "$ROUNDS"); do
    for placement in all leader none; do
        seed=$((seed + 1)); run "$placement" "$seed"
    done
done
for url in "${URLS[@]}"; do fault "$url" none; done
echo "== summary ($EVENTS events per run, load average $(cut -d' ' -f1-3 /proc/loadavg))"
for placement in all leader none; do echo "$placement:${RATES[$placement]}"; done
python3 - "${RATES[all]}" "${RATES[leader]}" "${RATES[none]}" <<'EOF'
import sys
mean = lambda s: sum(map(float, s.split())) / len(s.split())
a, l, n = (mean(x) for x in sys.argv[1:4])
print(f"leader-only / all: {l / a:.2f}; none / all: {n / a:.2f}")
EOF
