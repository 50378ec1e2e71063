#!/usr/bin/env bash
# Restart after kill -9, A/B between builds (docs/benchmarks.md, "Restart after kill -9").
# For each round, for each build in turn: a fresh node, a saturating replayed load, and as
# soon as the load ends (the services still catching up, as after a crash under load):
# - the journals' bytes on disk (the state store's, and the services' databases' summed);
# - kill -9, then the same build restarted on the same data directory, timed to
#   "storage open" (from its log), to listening, and to leading with its whole log applied
#   (GET /v1/admin/status), which also gives the state's approximate event count, and to
#   the services' databases being open (from its log).
# PostgreSQL's job-row figure (../shared/bench/postgres-ingest.sh) runs first, if present,
# so the loads' events/s carry a ratio from the same run.
#
# Usage: tools/bench-restart.sh EVENTS ROUNDS label=BINARY...
#   e.g. tools/bench-restart.sh 3000000 2 base=/tmp/tandem-base new=target/release/tandem
# Needs python3 and curl. Data goes under a temporary directory, removed at the end; only
# processes this script started are stopped, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,15p "$0"; exit 2; }
EVENTS=$1; ROUNDS=$2; shift 2
TANDEM=${TANDEM:-target/release/tandem}
ADMIN=bench-admin-key-not-secret
# How long a restarted node may take to listen and to answer, in seconds.
RESTART_S_MAX=300
# shellcheck source=tools/bench-common.sh
source tools/bench-common.sh

since() { python3 -c "import time; print('%.1f' % (time.time() - $1))"; }

postgres_job

for round in $(seq "$ROUNDS"); do
    for spec in "$@"; do
        label=${spec%%=*}; bin=${spec#*=}
        dir="$WORK/$label-$round"; mkdir -p "$dir"
        start_node "$bin" "$dir"
        out=$("$bin" load --target "$URL" --write-key bench-write-key-not-secret --events "$EVENTS" \
            --concurrency 64 --batch-size 100 --quiet --seed "$round" --replay)
        store_j=$(journal_bytes "$dir/node/store"); services_j=$(journal_bytes "$dir/node/services")
        kill -9 "$NODE"; wait "$NODE" 2>/dev/null
        rate=$(echo "$out" | awk '/events\/s/ {print $2}')
        ratio=$(of_pg "$rate")
        echo "== $label, round $round ($(date -u +%H:%M:%SZ), load $(cut -d' ' -f1 /proc/loadavg)): $rate events/s ($ratio of postgres), $(echo "$out" | grep -E '^ *failed' | tr -s ' ' | sed 's/^ //')"
        echo "  journals at kill -9: store $((store_j >> 20)) MiB, services $((services_j >> 20)) MiB"
        mv "$dir/node.log" "$dir/node-1.log"
        started=$(date +%s.%N)
        TANDEM_TLS__PEER_PLAINTEXT=true "$bin" node --data-dir "$dir/node" --listen 127.0.0.1:0 \
            --peer-listen 127.0.0.1:0 --write-key bench-write-key-not-secret --admin-key "$ADMIN" \
            >"$dir/node.log" 2>&1 &
        NODE=$!; PIDS+=("$NODE")
        URL=""
        for _ in $(seq $((RESTART_S_MAX * 10))); do
            URL=$(grep -a "listening on" "$dir/node.log" | grep -ao "http://127.0.0.1:[0-9]*" | head -1)
            [ -n "$URL" ] && break
            kill -0 "$NODE" 2>/dev/null || break
            sleep 0.1
        done
        [ -n "$URL" ] || { echo "  the restarted node did not listen:"; tail -5 "$dir/node.log"; exit 1; }
        listening=$(since "$started")
        open_ms=$(plain "$dir/node.log" | grep -a 'storage open' | grep -ao 'elapsed_ms=[0-9]*' | grep -o '[0-9]*' | head -1)
        answered=""; events=""
        for _ in $(seq $((RESTART_S_MAX * 10))); do
            events=$(leading_applied "$URL" "$ADMIN")
            [ -n "$events" ] && { answered=$(since "$started"); break; }
            sleep 0.1
        done
        # The services' databases: opened before the node listens up to 92e6b55 (one line,
        # "services' databases open"), by each service's worker after it since (one line each).
        # Timed by the log line's own timestamp, since it may come before the node answers.
        services_open=""
        for _ in $(seq $((RESTART_S_MAX * 10))); do
            line=$(plain "$dir/node.log" | grep -a -E "service database open|services' databases open" |
                awk '/databases open/ {print; exit} {n++} n == 3 {print; exit}')
            if [ -n "$line" ]; then
                services_open=$(python3 -c "import datetime, sys; t = datetime.datetime.fromisoformat(sys.argv[1]).timestamp(); print('%.1f' % (t - $started))" "${line%% *}")
                break
            fi
            sleep 0.1
        done
        echo "  restart: storage open ${open_ms:-?} ms, listening after $listening s, leading with its whole log applied after ${answered:-never (not within ${RESTART_S_MAX} s)} s, services' databases open after ${services_open:-never} s (events in the state, approximately: ${events:-?} of $EVENTS sent)"
        kill -INT "$NODE"; wait "$NODE" 2>/dev/null
        rm -rf "$dir"
    done
done
