#!/usr/bin/env bash
# Ten million events into one fresh node, in 20 replayed chunks of 500,000 (distinct seeds,
# so ~1M profiles at the end): per chunk the rate, latency, the node's CPU per event and peak
# memory, bytes written to the disk, and the data directory's parts. See docs/benchmarks.md.
#
# With CATCH_UP=1, a second, empty node then joins as a learner (`tandem cluster add-node
# --learner-only`): how long it takes to catch up (from the latest snapshot plus the log
# after it) and how big that snapshot is, beside the time the node took to build it.
# With RESTART=1, the first node is then killed with kill -9 and restarted on its data:
# its journals at the kill, and how long it took to open its storage, to listen, and to
# lead again with its whole log applied.
#
# Usage: [CATCH_UP=1] [RESTART=1] tools/bench-10m.sh [DATA_PARENT] [CHUNKS]    (defaults: a temporary directory, 20)
# Needs a release build (or TANDEM=BINARY, e.g. to compare builds). Stops only the nodes it
# started, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
TANDEM=${TANDEM:-target/release/tandem}
PARENT=${1:-$(mktemp -d)}
CHUNKS=${2:-20}
[ -x "$TANDEM" ] || { echo "build first: cargo build --release"; exit 1; }
# shellcheck source=tools/bench-lib.sh
source tools/bench-lib.sh
D="$PARENT/bench-10m"; rm -rf "$D"; mkdir -p "$D"
SOURCE=$(df --output=source "$PARENT" | tail -1)
DISK=$(lsblk -no PKNAME "$SOURCE" 2>/dev/null | head -1); DISK=${DISK:-$(basename "$SOURCE")}
CLUSTER_KEY=bench-cluster-key-not-secret
TANDEM_CLUSTER__CLUSTER_KEY=$CLUSTER_KEY TANDEM_TLS__PEER_PLAINTEXT=true "$TANDEM" node --data-dir "$D/data" --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --write-key bench-write-key-not-secret \
    --admin-key bench-admin-key-not-secret >"$D/node.log" 2>&1 &
NODE=$!
NODE2=""
trap 'kill -INT $NODE $NODE2 2>/dev/null; sleep 3; kill -9 $NODE $NODE2 2>/dev/null; rm -rf "$D"' EXIT
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


restart() {   # kill -9 the node, restart it on its data, time it to ready
    echo "== kill -9 and restart (journals: store $(($(journal_bytes "$D/data/store") >> 20)) MiB, services $(($(journal_bytes "$D/data/services") >> 20)) MiB)"
    kill -9 "$NODE"; wait "$NODE" 2>/dev/null
    mv "$D/node.log" "$D/node-before-restart.log"
    started=$(date +%s.%N)
    TANDEM_CLUSTER__CLUSTER_KEY=$CLUSTER_KEY TANDEM_TLS__PEER_PLAINTEXT=true "$TANDEM" node --data-dir "$D/data" --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --write-key bench-write-key-not-secret \
        --admin-key bench-admin-key-not-secret >"$D/node.log" 2>&1 &
    NODE=$!
    for _ in $(seq 3000); do grep -q "listening on" "$D/node.log" && break; sleep 0.1; done
    URL=$(grep -a "listening on" "$D/node.log" | grep -ao "http://127.0.0.1:[0-9]*" | head -1)
    [ -n "$URL" ] || { echo "the node did not restart:"; tail -5 "$D/node.log"; exit 1; }
    listening=$(echo "$(date +%s.%N) - $started" | bc)
    for _ in $(seq 3000); do
        leading_applied "$URL" bench-admin-key-not-secret >/dev/null && break
        sleep 0.1
    done
    echo "restarted: $(plain "$D/node.log" | grep -a "storage open" | grep -o "elapsed_ms=[0-9]*") to open storage, listening after $listening s, leading with its log applied after $(echo "$(date +%s.%N) - $started" | bc) s"
    # The filters are filled in the background after the node opens: wait for the last.
    for _ in $(seq 1200); do grep -q "filter of recent dedup keys" "$D/node.log" && break; sleep 0.1; done
    plain "$D/node.log" | grep -a -E "service database open|built the filter" |
        grep -o -E "(service database open|built the filter).*(elapsed|took)_ms=[0-9]*" | sed 's/^/  /'
}

if [ "${CATCH_UP:-0}" != 1 ]; then
    [ "${RESTART:-0}" = 1 ] && restart
    exit 0
fi
echo "== a new node catches up"
TANDEM_CLUSTER__NODE_ID=2 TANDEM_CLUSTER__BOOTSTRAP=false TANDEM_CLUSTER__CLUSTER_KEY=$CLUSTER_KEY \
    TANDEM_TLS__PEER_PLAINTEXT=true "$TANDEM" node --data-dir "$D/data2" --listen 127.0.0.1:0 \
    --peer-listen 127.0.0.1:0 --write-key bench-write-key-not-secret \
    --admin-key bench-admin-key-not-secret >"$D/node2.log" 2>&1 &
NODE2=$!
for _ in $(seq 100); do grep -q "listening on" "$D/node2.log" && break; sleep 0.1; done
URL2=$(grep -a "listening on" "$D/node2.log" | grep -ao "http://127.0.0.1:[0-9]*" | head -1)
PEER2=$(grep -a "peer listener on" "$D/node2.log" | grep -ao "127.0.0.1:[0-9]*" | head -1)
[ -n "$URL2" ] && [ -n "$PEER2" ] || { echo "the second node did not start:"; cat "$D/node2.log"; exit 1; }
started=$(date +%s.%N)
"$TANDEM" cluster add-node --target "$URL" --admin-key bench-admin-key-not-secret --node-id 2 \
    --url "$URL2" --peer-url "http://$PEER2" --region default --learner-only || exit 1
echo "caught up in $(echo "$(date +%s.%N) - $started" | bc) s"
echo "snapshots built by node 1 (bytes, elapsed_ms):"
plain "$D/node.log" | grep -a "built snapshot" | grep -o "bytes=[0-9]* elapsed_ms=[0-9]*"
echo "installed on node 2:"; plain "$D/node2.log" | grep -a -i "installed snapshot" | tail -3
echo "  node 2 on disk (MiB): $(du -sm "$D/data2"/* | awk '{printf "%s %s  ", $2, $1}' | sed "s|$D/data2/||g")"
if [ "${RESTART:-0}" = 1 ]; then
    kill -INT "$NODE2"; wait "$NODE2" 2>/dev/null; NODE2=""
    restart
fi
