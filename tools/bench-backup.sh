#!/usr/bin/env bash
# The backup benchmark of docs/benchmarks.md, in one run on one machine:
#   1. raw sequential disk bandwidth under the work directory (dd, direct I/O, 1 GiB);
#   2. one release node ingests EVENTS replayed events (throughput without a backup);
#   3. a full backup into a local repository, then an incremental one after 1% more
#      events: MB/s of checkpoint covered, bytes uploaded;
#   4. a restore of the newest backup: MB/s;
#   5. EVENTS more events while backups run back to back (throughput during a backup).
# The machine is shared and noisy: compare the ratios printed at the end, not absolutes.
#
# Usage: tools/bench-backup.sh [EVENTS]      (default 300000)
# Needs: a release build (cargo build --release). Data goes under a temporary directory,
# removed at the end; only processes this script started are stopped, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
TANDEM=$PWD/target/release/tandem
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh
WRITE=bench-write-key-not-secret
ADMIN=bench-admin-key-not-secret
now() { date +%s.%N; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }

echo "== raw sequential disk bandwidth ($WORK)"
write=$(dd if=/dev/zero of="$WORK/dd" bs=4M count=256 oflag=direct conv=fsync 2>&1 | awk '/copied/ {print $(NF-1), $NF}')
read_=$(dd if="$WORK/dd" of=/dev/null bs=4M iflag=direct 2>&1 | awk '/copied/ {print $(NF-1), $NF}')
rm -f "$WORK/dd"
echo "write $write, read $read_"

"$TANDEM" backup init --repo "$WORK/repo" --repo-key "$WORK/repo.key" --identity "$WORK/identity.age" >/dev/null
TANDEM_BACKUP__REPO="$WORK/repo" TANDEM_BACKUP__REPO_KEY_FILE="$WORK/repo.key" TANDEM_BACKUP__SCHEDULE="" \
    TANDEM_TLS__PEER_PLAINTEXT=true "$TANDEM" node --data-dir "$WORK/node" --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --write-key "$WRITE" \
    --admin-key "$ADMIN" >"$WORK/node.log" 2>&1 &
NODE=$!; PIDS+=("$NODE")
for _ in $(seq 100); do grep -q "listening on" "$WORK/node.log" && break; sleep 0.1; done
URL=$(grep "listening on" "$WORK/node.log" | grep -o "http://127.0.0.1:[0-9]*" | head -1)
load() {
    "$TANDEM" load --target "$URL" --write-key "$WRITE" --events "$1" --concurrency 64 \
        --batch-size 100 --quiet --seed "$2" --replay | awk '/events\/s/ {print $2}'
}

echo "== ingest without a backup"
BASE=$(load "$EVENTS" 1)
echo "events/s $BASE"

backup() {
    local started out
    started=$(now)
    out=$("$TANDEM" backup create --target "$URL" --admin-key "$ADMIN")
    echo "$out" | sed -n '1p;4p'
    local secs bytes
    secs=$(awk -v a="$started" -v b="$(now)" 'BEGIN { print b - a }')
    bytes=$(echo "$out" | awk '/scanned/ {print $2}')
    echo "  $(mbps "$bytes" "$secs") MB/s of checkpoint (${secs}s wall, the CLI's polling included)"
}
echo "== full backup"
backup
echo "== incremental backup after 1% more events"
load $((EVENTS / 100)) 2 >/dev/null
backup

echo "== restore"
started=$(now)
"$TANDEM" restore --repo "$WORK/repo" --repo-key "$WORK/repo.key" --identity "$WORK/identity.age" \
    --data-dir "$WORK/restored" | sed -n '1p'
secs=$(awk -v a="$started" -v b="$(now)" 'BEGIN { print b - a }')
bytes=$(du -sb "$WORK/restored/snapshots" | awk '{print $1}')
echo "  $(mbps "$bytes" "$secs") MB/s ($bytes bytes of checkpoint in ${secs}s)"

echo "== ingest while backups run back to back"
( while kill -0 "$NODE" 2>/dev/null && [ ! -e "$WORK/stop" ]; do
    "$TANDEM" backup create --target "$URL" --admin-key "$ADMIN" >/dev/null 2>&1 || true
  done ) &
LOOP=$!; PIDS+=("$LOOP")
DURING=$(load "$EVENTS" 3)
touch "$WORK/stop"; wait "$LOOP" 2>/dev/null
echo "events/s $DURING"
echo "== ratio: ingest during backups / without = $(awk -v a="$DURING" -v b="$BASE" 'BEGIN { printf "%.2f", a / b }')"
