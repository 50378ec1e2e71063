#!/usr/bin/env bash
# Profile reads while ingesting, A/B: binaries (or one binary under different settings)
# side by side in one run, each on a fresh copy of the same loaded data directory.
# Each variant gets a node on its own copy of DATA_DIR; then per mode, on each variant in
# turn, a fixed-rate replayed ingest and, once it runs, READ_SECS s of reads at a fixed
# rate in that mode.
# Modes: none (ingest alone), linearizable (the default), lease, local, after (a write
# position), health (GET /health/live: the HTTP path alone). See docs/benchmarks.md
# ("Reads while ingesting").
#
# Usage: tools/bench-reads-ab.sh DATA_DIR ACKED_FILE INGEST_RATE READ_RATE ROUNDS VARIANT...
#   VARIANT: label=BINARY[,ENV=VALUE...]   e.g. base=/work/bench/tandem-base new=target/release/tandem
#   DATA_DIR: a stopped node's data directory (built with `tandem load --acked ACKED_FILE`);
#   it is copied (under $TMPDIR), never changed. Needs python3 and curl. Stops only what it
#   started.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 6 ] || { sed -n 2,14p "$0"; exit 2; }
DATA=$1; ACKED=$2; RATE=$3; RRATE=$4; ROUNDS=$5; shift 5
VARIANTS=("$@")
READ_SECS=${READ_SECS:-15}
MODES=${MODES:-"none linearizable lease local after health"}
WKEY=bench-write-key-not-secret; AKEY=bench-admin-key-not-secret
TANDEM=${TANDEM:-target/release/tandem}   # the load generator and read-bench
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh

applied() {
    curl -s -H "Authorization: Bearer $AKEY" "$1/v1/admin/status" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["applied_index"])' 2>/dev/null
}

# "UNWAITED WAITED": the node's counters of profile reads answered at once or after waiting.
keyed_reads() {
    curl -s "$1/metrics" | awk '$1 == "tandem_profile_reads_unwaited_total" {u=$2}
        $1 == "tandem_profile_reads_waited_total" {w=$2} END {printf "%d %d", u, w}'
}

keyed_delta() {   # before after: the two counters' growth, "U/W" (0/0 on a build without them)
    local b=($1) a=($2)
    echo "$((a[0] - b[0]))/$((a[1] - b[1]))"
}

# Returns once the node's applied index moves (the replayed ingest has started).
wait_ingesting() {
    local first; first=$(applied "$1")
    for _ in $(seq 600); do
        sleep 0.2
        [ "$(applied "$1")" != "$first" ] && return 0
    done
    return 1
}

start_variant() {   # index label binary env...: starts a node on its own copy of DATA
    local at=$1 label=$2 bin=$3; shift 3
    rm -rf "$WORK/d$at"; cp -r "$DATA" "$WORK/d$at"
    env "$@" TANDEM_TLS__PEER_PLAINTEXT=true "$bin" node --data-dir "$WORK/d$at" \
        --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --write-key "$WKEY" --admin-key "$AKEY" \
        >"$WORK/node$at.log" 2>&1 &
    NODES[at]=$!; PIDS=("${NODES[@]}"); LABELS[at]=$label
    for _ in $(seq 600); do grep -q "listening on" "$WORK/node$at.log" && break; sleep 0.1; done
    URLS[at]=$(grep "listening on" "$WORK/node$at.log" | grep -o "http://127.0.0.1:[0-9]*" | head -1)
    [ -n "${URLS[at]}" ] || { echo "$label: the node did not start"; cat "$WORK/node$at.log"; exit 1; }
}

measure() {   # index mode seed: one fixed-rate ingest on that node, with reads in that mode
    local at=$1 mode=$2 seed=$3 node=${NODES[$1]} url=${URLS[$1]}
    "$TANDEM" load --target "$url" --write-key "$WKEY" --events $((RATE * (READ_SECS + 8))) \
        --rate "$RATE" --seed "$seed" --replay --quiet --concurrency 64 --watch-pid "$node" \
        >"$WORK/load.txt" 2>&1 &
    local load=$! reads="-"
    PIDS=("${NODES[@]}" "$load")   # only running processes: a finished pid may be reused
    if [ "$mode" != none ]; then
        wait_ingesting "$url"; sleep 2
        local extra=()
        case $mode in
            linearizable) ;;
            after) extra=(--after "$(applied "$url")") ;;
            health) extra=(--path /health/live) ;;
            *) extra=(--consistency "$mode") ;;
        esac
        local before; before=$(keyed_reads "$url")
        "$TANDEM" read-bench --target "$url" --key "$AKEY" --acked "$ACKED" \
            --seconds "$READ_SECS" --concurrency 4 --rate "$RRATE" "${extra[@]}" \
            >"$WORK/reads.txt" 2>&1
        reads=$(awk '/reads\/s/ {r=$2} /latency/ {p50=$3; p99=$6; p999=$9}
            /errors/ {e=$4} END {printf "%s reads/s, %s err, p50 %s p99 %s p99.9 %s ms", r, e, p50, p99, p999}' \
            "$WORK/reads.txt" | tr -d ',')
        # Linearizable and lease reads on the leader: answered at once / after waiting.
        reads="$reads; at once/waited $(keyed_delta "$before" "$(keyed_reads "$url")")"
    fi
    wait "$load"; PIDS=("${NODES[@]}")
    local rate cpu
    rate=$(awk '/events\/s/ {print $2}' "$WORK/load.txt")
    cpu=$(grep -o "[0-9.]* us/event" "$WORK/load.txt" | head -1)
    printf "%-10s %-13s ingest %7s ev/s %-15s | %s\n" "${LABELS[$at]}" "$mode" "$rate" "$cpu" "$reads"
}

# Every variant's node runs from the start (an idle node costs little); each mode is
# measured on every variant back to back, in an order that alternates between rounds
# (ABBA...), so a change in the machine's load falls on all of them alike.
NODES=(); URLS=(); LABELS=()
for at in "${!VARIANTS[@]}"; do
    variant=${VARIANTS[at]}; IFS=, read -r -a parts <<<"${variant#*=}"
    start_variant "$at" "${variant%%=*}" "${parts[0]}" "${parts[@]:1}"
done
echo "== $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg); ingest $RATE ev/s, reads $RRATE/s, $READ_SECS s per mode"
seed=700
order=("${!VARIANTS[@]}")
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        for at in "${order[@]}"; do
            seed=$((seed + 1)); measure "$at" "$mode" "$seed"
        done
        order=($(printf '%s\n' "${order[@]}" | tac))
    done
    echo "-- round $round done $(date -u +%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
done
