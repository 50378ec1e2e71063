#!/usr/bin/env bash
# One node, A/B between builds, PostgreSQL in the same run (docs/benchmarks.md, "Services
# step aside while ingest contends"). For each round, for each build in turn: a fresh node,
# a saturating replayed load, then
# - events/s and request latency (from `tandem load`);
# - the node's CPU per event during the load, per thread group (utime + stime from
#   /proc/PID/task/TID/stat before and after the load, threads grouped by name);
# - the node's bytes written per event (/proc/PID/io write_bytes);
# - the services' lag when the load ends, and the seconds until every service caught up.
# PostgreSQL's job-row figure (../shared/bench/postgres-ingest.sh) runs first, if present.
#
# Usage: tools/bench-node-ab.sh EVENTS ROUNDS label=BINARY...
#   e.g. tools/bench-node-ab.sh 1500000 2 base=/tmp/tandem-base new=target/release/tandem
# Needs python3 and curl. Data goes under a temporary directory, removed at the end; only
# processes this script started are stopped, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,14p "$0"; exit 2; }
EVENTS=$1; ROUNDS=$2; shift 2
TANDEM=${TANDEM:-target/release/tandem}
ADMIN=bench-admin-key-not-secret
# How long the services may take to catch up after a load, in seconds.
CATCH_UP_S_MAX=600
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh

threads() {   # PID: "TID NAME TICKS" per thread
    for task in /proc/"$1"/task/*; do
        name=$(tr ' ' '_' <"$task/comm" 2>/dev/null) || continue
        stat=$(sed 's/.*) //' "$task/stat" 2>/dev/null) || continue
        echo "${task##*/} $name $(echo "$stat" | awk '{print $12 + $13}')"
    done
}
cpu_by_group() {   # BEFORE AFTER EVENTS: µs of CPU per event per thread group, largest first
    python3 - "$1" "$2" "$3" <<'PY'
import collections, re, sys
def read(path):
    return {tid: (name, int(ticks)) for tid, name, ticks in (l.split() for l in open(path))}
before, after, events = read(sys.argv[1]), read(sys.argv[2]), int(sys.argv[3])
groups = collections.Counter()
for tid, (name, ticks) in after.items():
    groups[re.sub(r'[-:_]?\d+$', '', name)] += ticks - before.get(tid, (name, 0))[1]
total = sum(groups.values())
us = lambda ticks: ticks * 1e4 / events   # a tick is 10 ms
print("  cpu during the load: %.1f us/event: " % us(total) + ", ".join(
    "%s %.1f (%.0f%%)" % (g, us(t), 100 * t / total) for g, t in groups.most_common() if t > 0))
PY
}
lag_total() {
    curl -s -H "Authorization: Bearer $ADMIN" "$1/v1/admin/services" |
        python3 -c 'import json,sys; print(sum(s["lag"] for s in json.load(sys.stdin)["services"]))'
}

postgres_job

for round in $(seq "$ROUNDS"); do
    for spec in "$@"; do
        label=${spec%%=*}; bin=${spec#*=}
        dir="$WORK/$label-$round"; mkdir -p "$dir"
        start_node "$bin" "$dir"
        node=$NODE; url=$URL
        threads "$node" >"$dir/before"
        written0=$(awk '/^write_bytes/ {print $2}' /proc/"$node"/io)
        out=$("$bin" load --target "$url" --write-key bench-write-key-not-secret --events "$EVENTS" \
            --concurrency 64 --batch-size 100 --quiet --seed "$round" --replay --watch-pid "$node")
        threads "$node" >"$dir/after"
        written1=$(awk '/^write_bytes/ {print $2}' /proc/"$node"/io)
        rate=$(echo "$out" | awk '/events\/s/ {print $2}')
        ratio=$(of_pg "$rate")
        echo "== $label, round $round ($(date -u +%H:%M:%SZ), load $(cut -d' ' -f1 /proc/loadavg)): $rate events/s ($ratio of postgres), $(echo "$out" | grep latency | tr -s ' ' | sed 's/^ //')"
        cpu_by_group "$dir/before" "$dir/after" "$EVENTS"
        echo "  node bytes written: $(( (written1 - written0) / EVENTS )) per event"
        lag=$(lag_total "$url"); started=$(date +%s.%N)
        for _ in $(seq $((CATCH_UP_S_MAX * 4))); do [ "$(lag_total "$url")" = 0 ] && break; sleep 0.25; done
        echo "  services: $lag feed entries behind (summed) when the load ended, caught up $(python3 -c "import time; print('%.1f' % (time.time() - $started))") s later"
        kill -INT "$node"; wait "$node" 2>/dev/null
        rm -rf "$dir"
    done
done
