#!/usr/bin/env bash
# Profile reads while ingesting, one read mode at a time, against a running node that
# already holds data and the acknowledged-events file of its load (tandem load --acked).
# Each round: a fixed-rate replayed ingest, and after it has warmed up, 20 s of reads at a
# fixed rate in the given mode. See docs/benchmarks.md ("Reads while ingesting").
#
# Usage: tools/bench-reads.sh URL WRITE_KEY ADMIN_KEY ACKED_FILE [INGEST_RATE] [READ_RATE]
#   modes run: none, linearizable, lease, local, after   (defaults: 34000 events/s, 1000 reads/s)
set -uo pipefail
cd "$(dirname "$0")/.."
TANDEM=target/release/tandem
[ $# -ge 4 ] || { sed -n 2,8p "$0"; exit 2; }
URL=$1; WKEY=$2; AKEY=$3; ACKED=$4; RATE=${5:-34000}; RRATE=${6:-1000}
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
seed=500
for mode in none linearizable lease local after; do
    seed=$((seed + 1))
    "$TANDEM" load --target "$URL" --write-key "$WKEY" --events $((RATE * 30)) --rate "$RATE" \
        --seed "$seed" --replay --quiet --concurrency 16 >"$WORK/load.txt" 2>&1 &
    LOAD=$!
    if [ "$mode" != none ]; then
        sleep 9   # the replay prepares its bodies, then ingest reaches its rate
        extra=(--consistency "$mode")
        if [ "$mode" = after ]; then
            at=$(curl -s -H "Authorization: Bearer $AKEY" "$URL/v1/admin/status" |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["applied_index"])')
            extra=(--after "$at")
        fi
        "$TANDEM" read-bench --target "$URL" --key "$AKEY" --acked "$ACKED" --seconds 20 \
            --concurrency 4 --rate "$RRATE" "${extra[@]}" >"$WORK/reads.txt" 2>&1
    fi
    wait "$LOAD"
    echo "== mode $mode"
    grep -E "events/s|latency" "$WORK/load.txt" | sed 's/^/  ingest /'
    [ "$mode" != none ] && grep -E "reads|latency|error" "$WORK/reads.txt" | sed 's/^/  reads  /'
done
