#!/usr/bin/env bash
# The backup benchmark of docs/benchmarks.md, in one run on one machine:
#   1. raw sequential disk bandwidth under the work directory (dd, direct I/O, 1 GiB);
#   2. one release node ingests EVENTS replayed events (throughput without a backup);
#   3. a full backup into a local repository: MB/s of checkpoint (the node's own duration,
#      checkpoint included) and the node's CPU seconds per MB;
#   4. incrementals after 1% more events and after 1% of the profiles change (one
#      identify with a new trait each): bytes uploaded beside the full backup's;
#   5. a restore of the newest backup and a verify of every backup: MB/s and CPU;
#   6. CPU per MB stage by stage on the restored checkpoint (tandem bench-backup-stages);
#   7. EVENTS more events while backups run back to back, then EVENTS more without:
#      throughput during backups against the mean of the runs before and after.
# The machine is shared and noisy: compare the ratios printed, not absolutes.
#
# Usage: tools/bench-backup.sh [EVENTS] [WORKERS]   (defaults 300000, 0 = one per core)
# Needs: a release build (cargo build --release). Data goes under a temporary directory,
# removed at the end; only processes this script started are stopped, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
WORKERS=${2:-0}
TANDEM=$PWD/target/release/tandem
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh
WRITE=bench-write-key-not-secret
ADMIN=bench-admin-key-not-secret
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
# CPU seconds (user + system) a process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== raw sequential disk bandwidth ($WORK)"
dd_rate() { awk '/copied/ { for (i = 1; i <= NF; i++) if ($i ~ /B\/s$/) print $(i-1), $i }'; }
to_mbps() { awk '{ m = ($2 ~ /^G/) ? 1000 : ($2 ~ /^k/) ? 0.001 : 1; printf "%.0f", $1 * m }'; }
write=$(dd if=/dev/zero of="$WORK/dd" bs=4M count=256 oflag=direct conv=fsync 2>&1 | dd_rate)
read_=$(dd if="$WORK/dd" of=/dev/null bs=4M iflag=direct 2>&1 | dd_rate)
rm -f "$WORK/dd"
DISK_W=$(echo "$write" | to_mbps); DISK_R=$(echo "$read_" | to_mbps)
echo "write $write, read $read_ (MB/s: $DISK_W, $DISK_R)"

"$TANDEM" backup init --repo "$WORK/repo" --repo-key "$WORK/repo.key" --identity "$WORK/identity.age" >/dev/null
TANDEM_BACKUP__REPO="$WORK/repo" TANDEM_BACKUP__REPO_KEY_FILE="$WORK/repo.key" TANDEM_BACKUP__SCHEDULE="" \
    TANDEM_BACKUP__WORKERS="$WORKERS" TANDEM_TLS__PEER_PLAINTEXT=true \
    "$TANDEM" node --data-dir "$WORK/node" --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --write-key "$WRITE" \
    --admin-key "$ADMIN" >"$WORK/node.log" 2>&1 &
NODE=$!; PIDS+=("$NODE")
for _ in $(seq 100); do grep -q "listening on" "$WORK/node.log" && break; sleep 0.1; done
URL=$(grep "listening on" "$WORK/node.log" | grep -o "http://127.0.0.1:[0-9]*" | head -1)
load() {
    "$TANDEM" load --target "$URL" --write-key "$WRITE" --events "$1" --concurrency 64 \
        --batch-size 100 --quiet --seed "$2" --replay ${3:+--acked "$3"} | awk '/events\/s/ {print $2}'
}

echo "== ingest without a backup"
BASE=$(load "$EVENTS" 1 "$WORK/acked")
echo "events/s $BASE"

# Waits (at most 120 s) until every service has processed the whole feed, so that a
# backup's CPU figure is the backup's, not the services catching up after ingest.
settle() {
    for _ in $(seq 1200); do
        curl -s -H "Authorization: Bearer $ADMIN" "$URL/v1/admin/state-hash" | python3 -c '
import json, sys
b = json.load(sys.stdin)
sys.exit(0 if all(s["cursor"] == b["feed_head"] for s in b["services"]) else 1)' && return 0
        sleep 0.1
    done
    echo "  (services did not catch up in 120 s)"
}
# Runs a backup; sets SCANNED, UPLOADED, MS, CPU (node CPU seconds during it).
backup() {
    local before out
    settle
    before=$(cpu_of "$NODE")
    out=$("$TANDEM" backup create --target "$URL" --admin-key "$ADMIN") || { echo "backup failed"; exit 1; }
    CPU=$(awk -v a="$before" -v b="$(cpu_of "$NODE")" 'BEGIN { printf "%.2f", b - a }')
    read -r SCANNED UPLOADED NEW CHUNKS MS < <(echo "$out" | awk '/scanned/ {print $2, $5, $8, $10, $(NF-1)}')
    echo "  $SCANNED bytes scanned, $UPLOADED uploaded ($NEW of $CHUNKS chunks new) in $MS ms: $(awk -v b="$SCANNED" -v ms="$MS" 'BEGIN { printf "%.0f", b / ms / 1e3 }') MB/s, node CPU $CPU s ($(awk -v c="$CPU" -v b="$SCANNED" 'BEGIN { printf "%.1f", c * 1e9 / b }') ms/MB)"
}
phases() {
    grep -a "backup phases\|checkpoint written" "$WORK/node.log" | tail -2 | sed 's/\x1b\[[0-9;]*m//g' |
        grep -o "checkpoint_ms=[0-9]*\|chunks_ms=[0-9]*\|hashes_ms=[0-9]*\|workers=[0-9]*" | tr '\n' ' '
}
echo "== full backup"
backup
echo "  phases in the node: $(phases)"
FULL_UP=$UPLOADED; FULL_MBPS=$(awk -v b="$SCANNED" -v ms="$MS" 'BEGIN { printf "%.1f", b / ms / 1e3 }')
echo "== incremental backup after 1% more events"
load $((EVENTS / 100)) 2 >/dev/null
backup
echo "  phases in the node: $(phases)"
INC_EVENTS=$UPLOADED
PREV=$("$TANDEM" backup list --repo "$WORK/repo" --repo-key "$WORK/repo.key" --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[-1]["id"])')
echo "== incremental backup after 1% of the profiles change (one identify each)"
python3 - "$WORK/acked" "$URL" "$WRITE" <<'EOF'
import base64, json, random, sys, urllib.request
acked, url, key = sys.argv[1:]
ids = sorted({l.rstrip("\n").split("\t")[1] for l in open(acked) if "\t" in l})
users = [i.split(":", 1)[1] for i in ids if i.startswith("user_id:")]
pick = random.Random(10).sample(users, max(1, len(ids) // 100))
auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
for start in range(0, len(pick), 100):
    batch = [{"type": "identify", "userId": u, "traits": {"bench_tier": f"t{start}"}} for u in pick[start:start + 100]]
    req = urllib.request.Request(f"{url}/v1/batch", json.dumps({"batch": batch}).encode(),
                                 {"Content-Type": "application/json", "Authorization": auth})
    urllib.request.urlopen(req).read()
print(f"  changed {len(pick)} of {len(ids)} profiles")
EOF
backup
echo "  phases in the node: $(phases)"
INC_PROFILES=$UPLOADED

echo "== restore"
TIMEFORMAT='%R %U %S'
{ time "$TANDEM" restore --repo "$WORK/repo" --repo-key "$WORK/repo.key" --identity "$WORK/identity.age" \
    --data-dir "$WORK/restored" >"$WORK/restore.out"; } 2>"$WORK/restore.time"
read -r secs user sys <"$WORK/restore.time"
bytes=$(du -sb "$WORK/restored/snapshots" | awk '{print $1}')
RESTORE_MBPS=$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.1f", b / s / 1e6 }')
echo "  $bytes bytes of checkpoint in ${secs}s: $RESTORE_MBPS MB/s, CPU $user s user + $sys s system"

echo "== verify (every backup)"
{ time "$TANDEM" backup verify --repo "$WORK/repo" --repo-key "$WORK/repo.key" --identity "$WORK/identity.age" \
    >"$WORK/verify.out"; } 2>"$WORK/verify.time"
read -r secs user sys <"$WORK/verify.time"
checked=$(awk '/verified/ {print $6}' "$WORK/verify.out")
VERIFY_MBPS=$(awk -v b="$checked" -v s="$secs" 'BEGIN { printf "%.1f", b / s / 1e6 }')
echo "  $(head -1 "$WORK/verify.out"): $VERIFY_MBPS MB/s, CPU $user s user + $sys s system"

echo "== CPU per MB, stage by stage, on the restored checkpoint (and the state's chunks"
echo "   against the backup before the 1% profile change, by chunk size)"
"$TANDEM" restore --repo "$WORK/repo" --repo-key "$WORK/repo.key" --identity "$WORK/identity.age" \
    --backup "$PREV" --data-dir "$WORK/before" >/dev/null
"$TANDEM" bench-backup-stages --work-dir "$WORK" --previous-state "$(echo "$WORK"/before/snapshots/*/state)" \
    "$WORK"/restored/snapshots/*/

echo "== ingest while backups run back to back"
( while kill -0 "$NODE" 2>/dev/null && [ ! -e "$WORK/stop" ]; do
    "$TANDEM" backup create --target "$URL" --admin-key "$ADMIN" >>"$WORK/loop.out" 2>&1 || true
  done ) &
LOOP=$!; PIDS+=("$LOOP")
DURING=$(load "$EVENTS" 3)
touch "$WORK/stop"; wait "$LOOP" 2>/dev/null
echo "events/s $DURING ($(grep -c '^backup ' "$WORK/loop.out") backups ran)"
echo "== ingest without a backup, after"
AFTER=$(load "$EVENTS" 4)
echo "events/s $AFTER"

echo "== summary (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "backup  $FULL_MBPS MB/s = $(ratio "$FULL_MBPS" "$DISK_W") of the disk's sequential write"
echo "restore $RESTORE_MBPS MB/s = $(ratio "$RESTORE_MBPS" "$DISK_R") of the disk's sequential read"
echo "verify  $VERIFY_MBPS MB/s = $(ratio "$VERIFY_MBPS" "$DISK_R") of the disk's sequential read"
echo "incremental after 1% more events: $(ratio "$INC_EVENTS" "$FULL_UP") of the full upload"
echo "incremental after 1% of profiles changed: $(ratio "$INC_PROFILES" "$FULL_UP") of the full upload"
echo "ingest during backups / mean of before and after = $(awk -v d="$DURING" -v a="$BASE" -v b="$AFTER" 'BEGIN { printf "%.2f", 2 * d / (a + b) }')"
