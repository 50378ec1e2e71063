#!/usr/bin/env bash
# Where a write's time goes on three nodes, A/B: for each build in turn (alternating, ROUNDS
# times), a fresh three-node `tandem up`, a fixed-rate replayed load through its gateway,
# and the quantiles of every node's write-stage histograms over the run (the difference of
# two scrapes; a quantile is its bucket's upper bound). See docs/benchmarks.md ("Fifth
# session: writes answered at commit").
#
# Usage: tools/bench-write-stages.sh RATE ROUNDS label=BINARY...
#   e.g. tools/bench-write-stages.sh 20000 3 base=/tmp/tandem-base new=target/release/tandem
# Env: EVENTS (default 300000 per run). Needs python3 and curl. Data under a temporary
# directory, removed at the end; only processes this script started are stopped, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,11p "$0"; exit 2; }
RATE=$1; ROUNDS=$2; shift 2
EVENTS=${EVENTS:-300000}
TANDEM=${TANDEM:-target/release/tandem}
ADMIN=demo-admin-key-not-secret
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh

quantiles() {   # before after: p50/p90/p99 of each write-stage histogram's growth
    python3 - "$1" "$2" <<'PY'
import collections, re, sys
def parse(path):
    h = collections.defaultdict(dict)
    for line in open(path):
        m = re.match(r'^(tandem_(?:write_stage|apply|replicate)_duration_seconds)_bucket\{(.*)\} (\S+)$', line)
        if not m:
            continue
        name, labels, value = m.groups()
        le = re.search(r'le="([^"]+)"', labels).group(1)
        rest = re.sub(r',?le="[^"]+"', '', labels)
        h[(name, rest)][float('inf') if le == '+Inf' else float(le)] = float(value)
    return h
before, after = parse(sys.argv[1]), parse(sys.argv[2])
for key in sorted(after):
    counts = [(le, after[key][le] - before.get(key, {}).get(le, 0)) for le in sorted(after[key])]
    total = counts[-1][1]
    if total <= 0:
        continue
    qs = [next(le for le, c in counts if c >= q * total) * 1000 for q in (0.5, 0.9, 0.99)]
    stage = key[1].strip(',').replace('stage=', '').strip('"')
    label = key[0].replace('tandem_', '').replace('_duration_seconds', '') + (f' {stage}' if stage else '')
    print(f"    {label:<24} n={int(total):>6}  p50 {qs[0]:7.1f}  p90 {qs[1]:7.1f}  p99 {qs[2]:7.1f} ms")
PY
}

for round in $(seq "$ROUNDS"); do
    for variant in "$@"; do
        label=${variant%%=*}; bin=${variant#*=}
        dir="$WORK/$label-$round"
        "$bin" up --data-dir "$dir" --port 0 --no-demo >"$dir.log" 2>&1 &
        UP=$!; PIDS=("$UP")
        for _ in $(seq 300); do grep -q "gateway ready" "$dir.log" && break; sleep 0.1; done
        GATEWAY=$(grep -o "API (gateway) *http://[0-9.:]*" "$dir.log" | grep -o "http://.*")
        mapfile -t NODE_URLS < <(grep -o "^  node [0-9] *http://[0-9.:]*" "$dir.log" | grep -o "http://.*")
        [ -n "$GATEWAY" ] || { echo "$label: tandem up did not start"; cat "$dir.log"; exit 1; }
        for at in "${!NODE_URLS[@]}"; do
            curl -s -H "Authorization: Bearer $ADMIN" "${NODE_URLS[at]}/metrics" >"$dir.m$at.before"
        done
        WATCH=()
        for pid in $(pgrep -f "node --data-dir $dir"); do WATCH+=(--watch-pid "$pid"); done
        out=$("$TANDEM" load --target "$GATEWAY" --write-key demo-write-key-not-secret \
            --events "$EVENTS" --rate "$RATE" --concurrency 64 --batch-size 100 --quiet \
            --seed "$round" --replay "${WATCH[@]}")
        echo "== $label, round $round ($(date -u +%TZ), load $(cut -d' ' -f1 /proc/loadavg)):" \
            "$(echo "$out" | awk '/events\/s/ {print $2 " events/s"}')," \
            "$(echo "$out" | grep latency | tr -s ' ' | sed 's/^ *latency *//')," \
            "$(echo "$out" | grep 'watched cpu' | grep -o '[0-9.]* us/event') of CPU on the three nodes"
        for at in "${!NODE_URLS[@]}"; do
            curl -s -H "Authorization: Bearer $ADMIN" "${NODE_URLS[at]}/metrics" >"$dir.m$at.after"
            role=follower; grep -q '^tandem_raft_is_leader 1' "$dir.m$at.after" && role=leader
            echo "  node $((at + 1)) ($role)"
            quantiles "$dir.m$at.before" "$dir.m$at.after"
        done
        kill -INT "$UP"; wait "$UP" 2>/dev/null; PIDS=()
    done
done
