# Functions only, no side effects: sourced by tools/bench-common.sh (so by every script that
# sources it) and by tools/bench-10m.sh, which keeps its own data directory and cleanup.

# postgres_job: PostgreSQL's job-row figure (../shared/bench/postgres-ingest.sh, or
# $PEERS_DIR) in events/s, announced on a line of its own; sets PG ("n/a" without it).
postgres_job() {
    local peers=${PEERS_DIR:-../shared/bench}
    PG="n/a"
    if [ -x "$peers/postgres-ingest.sh" ]; then
        PG=$("$peers/postgres-ingest.sh" 2>&1 | awk '/postgres job:/ {print $3}')
        echo "== postgres job rows: $PG events/s ($(date -u +%H:%M:%SZ))"
    fi
}

# of_pg RATE: RATE as a ratio of $PG, two decimals ("n/a" without a figure).
of_pg() {
    python3 -c "print('%.2f' % ($1 / $PG))" 2>/dev/null || echo "n/a"
}

# plain FILE: a node log's lines without their colour codes.
plain() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }

# journal_bytes DIR: bytes of fjall journals (*.jnl) under DIR.
journal_bytes() {
    find "$1" -name '*.jnl' -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}'
}

# leading_applied URL ADMIN_KEY: succeeds once the node at URL leads and has applied its
# whole log, printing the state's approximate event count; fails before (or while the node
# does not answer).
leading_applied() {
    curl -s -m 2 -H "Authorization: Bearer $2" "$1/v1/admin/status" | python3 -c '
import json, sys
s = json.load(sys.stdin); r = s["raft"]
if r["state"] != "Leader" or r["last_applied"] != r["last_log_index"]:
    sys.exit(1)
print(s["counts"]["events_approx"])' 2>/dev/null
}
