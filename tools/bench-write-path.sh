#!/usr/bin/env bash
# The write-path benchmark of docs/benchmarks.md, Tandem and its peers in one run:
#   1. PostgreSQL's durable ingest and a 3-node etcd (../shared/bench/*.sh, if present);
#   2. one Tandem node, durable, replayed 100-event batches;
#   3. three Tandem nodes of `tandem up` on this machine, through the gateway: saturating
#      runs, then fixed rates of 80% and 50% of the best (request latency below saturation).
# The machine is shared and noisy: compare the ratios printed at the end, not absolutes.
#
# Usage: tools/bench-write-path.sh [EVENTS_PER_RUN] [RUNS]      (defaults 300000 3)
# Needs: a release build (cargo build --release), or TANDEM=BINARY to measure another
# build; for the peers, postgresql-15, etcd-server, etcd-client and wrk (apt-get install).
# Data goes under a temporary directory, removed at the end; only processes this script
# started are stopped, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
RUNS=${2:-3}
TANDEM=${TANDEM:-target/release/tandem}
PEERS=${PEERS_DIR:-../shared/bench}
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh
# The block device under $WORK: a partition's parent disk, or the device itself if whole.
SOURCE=$(df --output=source "$WORK" | tail -1)
DISK=$(lsblk -no PKNAME "$SOURCE" 2>/dev/null | head -1)
DISK=${DISK:-$(basename "$SOURCE")}

rate() { awk '/events\/s/ {print $2}'; }

echo "== peers"
PG="n/a"; ETCD="n/a"
if [ -x "$PEERS/postgres-ingest.sh" ]; then
    out=$("$PEERS/postgres-ingest.sh" 2>&1); echo "$out"
    PG=$(echo "$out" | awk '/postgres job:/ {print $3}')
fi
if [ -x "$PEERS/etcd-ingest.sh" ]; then
    out=$("$PEERS/etcd-ingest.sh" 2>&1); echo "$out"
    ETCD=$(echo "$out" | awk '/etcd 3 nodes:/ {print $4}')
fi

echo "== one node"
TANDEM_TLS__PEER_PLAINTEXT=true "$TANDEM" node --data-dir "$WORK/single" --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --write-key bench-write-key-not-secret \
    --admin-key bench-admin-key-not-secret >"$WORK/single.log" 2>&1 &
NODE=$!; PIDS+=("$NODE")
for _ in $(seq 100); do grep -q "listening on" "$WORK/single.log" && break; sleep 0.1; done
URL=$(grep "listening on" "$WORK/single.log" | grep -o "http://127.0.0.1:[0-9]*" | head -1)
[ -n "$URL" ] || { echo "the node did not start:"; cat "$WORK/single.log"; exit 1; }
SINGLE=()
for run in $(seq "$RUNS"); do
    out=$("$TANDEM" load --target "$URL" --write-key bench-write-key-not-secret --events "$EVENTS" \
        --concurrency 64 --batch-size 100 --quiet --seed "$run" --replay \
        --watch-pid "$NODE" --disk "$DISK")
    echo "$out" | grep -E "events/s|latency|pid|disk"
    SINGLE+=("$(echo "$out" | rate)")
done
kill -INT "$NODE"; wait "$NODE" 2>/dev/null

echo "== three nodes (tandem up, through the gateway)"
"$TANDEM" up --data-dir "$WORK/up" --port 0 --no-demo >"$WORK/up.log" 2>&1 &
UP=$!; PIDS+=("$UP")
for _ in $(seq 300); do grep -q "gateway ready" "$WORK/up.log" && break; sleep 0.1; done
GATEWAY=$(grep -o "API (gateway) *http://[0-9.:]*" "$WORK/up.log" | grep -o "http://.*")
NODES=$(pgrep -f "tandem node --data-dir $WORK/up" | tr '\n' ' ')
WATCH=""; for pid in $NODES; do WATCH="$WATCH --watch-pid $pid"; done
CLUSTER=()
for run in $(seq "$RUNS"); do
    # shellcheck disable=SC2086
    out=$("$TANDEM" load --target "$GATEWAY" --write-key demo-write-key-not-secret --events "$EVENTS" \
        --concurrency 64 --batch-size 100 --quiet --seed "$((100 + run))" --replay $WATCH --disk "$DISK")
    echo "$out" | grep -E "events/s|latency|watched|disk"
    CLUSTER+=("$(echo "$out" | rate)")
done

# Latency at fixed rates below saturation (the p99 target is stated at 80%).
BEST=$(printf '%s\n' "${CLUSTER[@]}" | sort -n | tail -1)
for pct in 80 50; do
    rate=$(( ${BEST%.*} * pct / 100 ))
    echo "== three nodes at ${pct}% of the best rate: $rate events/s"
    "$TANDEM" load --target "$GATEWAY" --write-key demo-write-key-not-secret --events "$EVENTS" \
        --concurrency 64 --batch-size 100 --quiet --seed "$((200 + pct))" --replay --rate "$rate" \
        | grep -E "events/s|latency"
done

echo
echo "== summary ($EVENTS events per run, machine: $(nproc) cores)"
echo "postgres job rows: $PG events/s; etcd 3 nodes: $ETCD events/s"
echo "tandem 1 node:  ${SINGLE[*]} events/s"
echo "tandem 3 nodes: ${CLUSTER[*]} events/s"
ratio() { python3 -c "import sys; a=[float(x) for x in sys.argv[2:] if x]; b=sys.argv[1]; print('n/a' if b in ('n/a','') or not a else round(max(a)/float(b), 2))" "$@"; }
echo "best 1 node / postgres: $(ratio "$PG" "${SINGLE[@]}")"
echo "best 3 nodes / etcd:    $(ratio "$ETCD" "${CLUSTER[@]}")"
