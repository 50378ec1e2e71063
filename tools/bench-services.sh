#!/usr/bin/env bash
# CPU per event of each CDP service inside a real node (docs/benchmarks.md, "CDP services"):
# one node, optionally SEGMENTS segments defined first (the mix of `tandem bench-segments`),
# then EVENTS replayed events of the load generator's workload; once every service has
# caught up (lag 0), the CPU each service thread used (utime + stime from
# /proc/PID/task/TID/stat, threads grouped by name) divided by the events.
# CPU time, unlike wall-clock, barely moves with the noise of a shared machine.
#
# Usage: tools/bench-services.sh [EVENTS] [SEGMENTS]      (defaults 300000 0)
# Needs a release build (cargo build --release). Data goes under a temporary directory,
# removed at the end; only the node this script started is stopped, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
SEGMENTS=${2:-0}
TANDEM=${TANDEM:-target/release/tandem}
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh
ADMIN=bench-admin-key-not-secret
# How long the services may take to catch up after the load, in seconds.
CATCH_UP_S_MAX=900

start_node "$TANDEM" "$WORK"

# The rule mix of `tandem bench-segments` (src/cli/bench_segments.rs, `rule`).
rule() {
    local n=$1 cats=(Cameras Audio Books Kitchen Outdoor Toys)
    local cat=${cats[$((n % 6))]} k=$((1 + n % 5))
    case $((n % 8)) in
        0) echo "lifetime_value > $((50 * (n + 1)))" ;;
        1) echo "orders_count >= $k and favorite_category == \\\"$cat\\\"" ;;
        2) echo "event(\\\"Order Completed\\\").within($((7 + n % 60))d).count() >= $k" ;;
        3) echo "open_tickets > 0 and (last_csat == null or last_csat <= $k)" ;;
        4) echo "event(\\\"Product Viewed\\\").within($((1 + n % 14))d).count() >= $k and not event(\\\"Order Completed\\\").exists()" ;;
        5) echo "avg_order_value >= $((20 * k)) or tickets_90d >= $k" ;;
        6) if [ "$n" -ge 8 ]; then
               echo "in_segment(\\\"seg-$((n - 6))\\\") and event(\\\"Product Added\\\").within(30d).exists()"
           else echo "trait(\\\"email\\\") != null and lifetime_value > $((100 * k))"; fi ;;
        *) echo "trait(\\\"email\\\") != null and lifetime_value > $((100 * k))" ;;
    esac
}
for n in $(seq 0 $((SEGMENTS - 1))); do
    code=$(curl -s -o "$WORK/seg.out" -w '%{http_code}' -X POST "$URL/v1/segments" \
        -H "Authorization: Bearer $ADMIN" -H 'content-type: application/json' \
        -d "{\"id\":\"seg-$n\",\"rule\":\"$(rule "$n")\"}")
    [ "$code" = 201 ] || { echo "defining seg-$n: HTTP $code $(cat "$WORK/seg.out")"; exit 1; }
done

# CPU ticks of every thread ("TID NAME TICKS"), sampled every second into $WORK/samples
# so that a thread that exits (a worker replaced as hung) still counts up to its last
# sample; per name, the sum over its threads of (last - first) ticks.
sample() {
    for task in /proc/"$NODE"/task/*; do
        name=$(tr ' ' '_' <"$task/comm" 2>/dev/null) || continue
        # Fields after the ")" closing comm: utime and stime are the 12th and 13th.
        stat=$(sed 's/.*) //' "$task/stat" 2>/dev/null) || continue
        echo "${task##*/} $name $(echo "$stat" | awk '{print $12 + $13}')"
    done
    echo "0 TOTAL $(sed 's/.*) //' "/proc/$NODE/stat" | awk '{print $12 + $13}')"
}
lag_total() {
    curl -s -H "Authorization: Bearer $ADMIN" "$URL/v1/admin/services" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); s=d.get("services", d); print(sum(x["lag"] for x in s))'
}

sample >"$WORK/samples"
( while kill -0 "$NODE" 2>/dev/null; do sample >>"$WORK/samples"; sleep 1; done ) &
SAMPLER=$!; PIDS+=("$SAMPLER")
started=$(date +%s)
"$TANDEM" load --target "$URL" --write-key bench-write-key-not-secret --events "$EVENTS" \
    --concurrency 64 --batch-size 100 --quiet --seed 1 --replay --watch-pid "$NODE" |
    grep -E "events/s|latency|pid"
load_done=$(date +%s)
deadline=$((load_done + CATCH_UP_S_MAX))
until [ "$(lag_total)" = 0 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "services did not catch up in ${CATCH_UP_S_MAX}s"; exit 1; }
    sleep 1
done
sample >>"$WORK/samples"
kill "$SAMPLER" 2>/dev/null
echo "services caught up $(( $(date +%s) - load_done )) s after the load ended ($(( $(date +%s) - started )) s in all)"

HZ=$(getconf CLK_TCK)
echo "== CPU per event, $EVENTS events, $SEGMENTS segments (thread: CPU s, µs per event, share of the node)"
awk -v hz="$HZ" -v ev="$EVENTS" '
    !($1 in first) {first[$1] = $3; name[$1] = $2}
    {last[$1] = $3}
    END {
        for (t in first) cpu[name[t]] += (last[t] - first[t]) / hz
        total = cpu["TOTAL"]
        for (n in cpu) if (n != "TOTAL" && cpu[n] > 0)
            printf "%-18s %8.2f s %8.1f µs %5.1f%%\n", n, cpu[n], cpu[n] * 1e6 / ev, 100 * cpu[n] / total
        printf "%-18s %8.2f s %8.1f µs\n", "node total", total, total * 1e6 / ev
    }' "$WORK/samples" | sort -k4 -n -r
grep -c "service hung" "$WORK/node.log" | xargs echo "workers replaced as hung:"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
