#!/usr/bin/env bash
# Ten million events into one fresh node, in 20 replayed chunks of 500,000 (distinct seeds,
# so ~1M profiles at the end): per chunk the rate, latency, the node's CPU per event and peak
# memory, bytes written to the disk, and the data directory's parts. See docs/benchmarks.md.
#
# Usage: tools/bench-10m.sh [DATA_PARENT] [CHUNKS]    (defaults: a temporary directory, 20)
# Needs a release build. Stops only the node it started, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
TANDEM=target/release/tandem
PARENT=${1:-$(mktemp -d)}
CHUNKS=${2:-20}
[ -x "$TANDEM" ] || { echo "build first: cargo build --release"; exit 1; }
D="$PARENT/bench-10m"; rm -rf "$D"; mkdir -p "$D"
SOURCE=$(df --output=source "$PARENT" | tail -1)
DISK=$(lsblk -no PKNAME "$SOURCE" 2>/dev/null | head -1); DISK=${DISK:-$(basename "$SOURCE")}
TANDEM_TLS__PEER_PLAINTEXT=true "$TANDEM" node --data-dir "$D/data" --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --write-key bench-write-key-not-secret \
    --admin-key bench-admin-key-not-secret >"$D/node.log" 2>&1 &
NODE=$!
trap 'kill -INT $NODE 2>/dev/null; sleep 3; kill -9 $NODE 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$D/node.log" && break; sleep 0.1; done
URL=$(grep -a "listening on" "$D/node.log" | grep -ao "http://127.0.0.1:[0-9]*" | head -1)
echo "node pid $NODE at $URL, disk $DISK"
for i in $(seq 1 "$CHUNKS"); do
    out=$("$TANDEM" load --target "$URL" --write-key bench-write-key-not-secret --events 500000 \
        --concurrency 64 --batch-size 100 --quiet --seed $((1000 + i)) --replay \
        --watch-pid "$NODE" --disk "$DISK")
    echo "chunk $i: $(echo "$out" | grep -E 'events/s|latency|pid|disk' | tr -s ' ' | tr '\n' ';')"
    echo "  on disk (MiB): $(du -sm "$D/data"/* | awk '{printf "%s %s  ", $2, $1}' | sed "s|$D/data/||g")"
done
curl -s -H "Authorization: Bearer bench-admin-key-not-secret" "$URL/v1/admin/status"; echo
grep -a "built snapshot" "$D/node.log" | tail -3
