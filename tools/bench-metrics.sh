#!/usr/bin/env bash
# What /metrics costs (docs/benchmarks.md, "Metrics cost"): one durable node, replayed
# 100-event batches, without a scraper and with one scraping /metrics every second; each
# mode on a fresh node. Prints events/s per run and the scrape latencies (curl time_total).
#
# Usage: tools/bench-metrics.sh [EVENTS_PER_RUN] [RUNS]      (defaults 300000 2)
# TANDEM=path/to/tandem measures another build (say, main's, for the instrumentation's
# own cost). Needs a release build (cargo build --release) and curl. Data goes under a temporary
# directory, removed at the end; only processes this script started are stopped, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
RUNS=${2:-2}
TANDEM=${TANDEM:-target/release/tandem}
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh

for mode in none scraped; do
    echo "== $mode"
    TANDEM_TLS__PEER_PLAINTEXT=true "$TANDEM" node --data-dir "$WORK/$mode" --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 \
        --write-key bench-write-key-not-secret --admin-key bench-admin-key-not-secret \
        >"$WORK/$mode.log" 2>&1 &
    NODE=$!; PIDS+=("$NODE")
    for _ in $(seq 100); do grep -q "listening on" "$WORK/$mode.log" && break; sleep 0.1; done
    URL=$(grep "listening on" "$WORK/$mode.log" | grep -o "http://127.0.0.1:[0-9]*" | head -1)
    SCRAPER=""
    if [ "$mode" = scraped ]; then
        (while true; do
            curl -s -o /dev/null -w '%{time_total}\n' "$URL/metrics"
            sleep 1
        done) >"$WORK/scrapes.txt" &
        SCRAPER=$!; PIDS+=("$SCRAPER")
    fi
    for run in $(seq "$RUNS"); do
        "$TANDEM" load --target "$URL" --write-key bench-write-key-not-secret --events "$EVENTS" \
            --concurrency 64 --batch-size 100 --quiet --seed "$run" --replay | grep -E "events/s"
    done
    if [ -n "$SCRAPER" ]; then
        kill "$SCRAPER" 2>/dev/null
        sort -n "$WORK/scrapes.txt" | awk '{v[NR]=$1} END {
            p50 = int(NR*0.5)+1; p99 = int(NR*0.99)+1; if (p99 > NR) p99 = NR
            printf "scrapes: %d, p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
                NR, v[p50]*1000, v[p99]*1000, v[NR]*1000 }'
    fi
    kill -INT "$NODE" 2>/dev/null
done
