#!/usr/bin/env bash
# /metrics with ~1,000,000 profiles stored (docs/benchmarks.md, "Metrics cost"; issue 9's
# target: scrape p99 <= 20 ms). A fresh durable node is loaded with CHUNKS replayed chunks
# of 500,000 events (distinct seeds: ~50,000 new profiles each, so 20 chunks give ~1M),
# then /metrics is scraped SCRAPES times 10 per second, first idle, then while one more
# chunk is being ingested. Prints each phase's p50/p99/max (curl time_total) and the
# node's profile count, and the node's own (server-side) latency histogram of /metrics.
#
# Usage: tools/bench-metrics-1m.sh [DATA_PARENT] [CHUNKS] [SCRAPES]   (defaults: temp dir, 20, 300)
# Needs a release build and curl. Stops only the node it started, by pid; removes its data.
set -uo pipefail
cd "$(dirname "$0")/.."
TANDEM=${TANDEM:-target/release/tandem}
PARENT=${1:-$(mktemp -d)}
CHUNKS=${2:-20}
SCRAPES=${3:-300}
[ -x "$TANDEM" ] || { echo "build first: cargo build --release"; exit 1; }
D="$PARENT/bench-metrics-1m"; rm -rf "$D"; mkdir -p "$D"
TANDEM_TLS__PEER_PLAINTEXT=true "$TANDEM" node --data-dir "$D/data" --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --write-key bench-write-key-not-secret \
    --admin-key bench-admin-key-not-secret >"$D/node.log" 2>&1 &
NODE=$!
LOADER=""
trap 'kill $LOADER 2>/dev/null; kill -INT $NODE 2>/dev/null; sleep 3; kill -9 $NODE 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$D/node.log" && break; sleep 0.1; done
URL=$(grep -a "listening on" "$D/node.log" | grep -ao "http://127.0.0.1:[0-9]*" | head -1)
echo "node pid $NODE at $URL"
load_chunk() {
    "$TANDEM" load --target "$URL" --write-key bench-write-key-not-secret --events 500000 \
        --concurrency 64 --batch-size 100 --quiet --seed $((1000 + $1)) --replay
}
for i in $(seq 1 "$CHUNKS"); do
    echo "chunk $i: $(load_chunk "$i" | grep -E 'events/s' | tr -s ' ')"
done
status() {
    curl -s -H "Authorization: Bearer bench-admin-key-not-secret" "$URL/v1/admin/status" |
        grep -o '"profiles_approx":[0-9]*'
}
echo "stored: $(status)"
scrape_phase() {
    local name=$1 out="$D/scrapes-$1.txt"
    : >"$out"
    for _ in $(seq "$SCRAPES"); do
        curl -s -o /dev/null -w '%{time_total}\n' "$URL/metrics" >>"$out"
        sleep 0.1
    done
    sort -n "$out" | awk -v name="$name" '{v[NR]=$1} END {
        p50 = int(NR*0.5)+1; p99 = int(NR*0.99)+1; if (p99 > NR) p99 = NR
        printf "%s: %d scrapes, p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
            name, NR, v[p50]*1000, v[p99]*1000, v[NR]*1000 }'
    # The node's own view of the same scrapes (router to response, no accept or queueing
    # before it): cumulative buckets of its /metrics latency histogram.
    echo "  server-side /metrics buckets so far (le: count): $(curl -s "$URL/metrics" |
        grep 'tandem_http_request_duration_seconds_bucket{.*endpoint="/metrics"}' |
        sed -E 's/.*le="([^"]*)".* ([0-9]+)$/\1:\2/' | tr '\n' ' ')"
}
scrape_phase idle
load_chunk $((CHUNKS + 1)) >"$D/last-chunk.txt" &
LOADER=$!
sleep 5   # the replayed bodies are built before sending starts
scrape_phase ingesting
wait "$LOADER"; LOADER=""
echo "last chunk: $(grep -E 'events/s' "$D/last-chunk.txt" | tr -s ' ')"
echo "data dir files: $(find "$D/data" -type f | wc -l), $(du -sm "$D/data" | cut -f1) MiB"
echo "stored: $(status)"
