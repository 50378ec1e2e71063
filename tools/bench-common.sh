# Sourced by tools/bench-*.sh after they set TANDEM: a temporary work directory (WORK),
# removed at exit, and the pids the script started (PIDS), stopped at exit by pid only —
# SIGINT first, SIGKILL for any still running 2 s later.
# shellcheck source=tools/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null; done
    sleep 2
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
[ -x "$TANDEM" ] || { echo "build first: cargo build --release"; exit 1; }
# node_url LOG: waits up to 10 s for a node to log its client address in LOG, prints it
# (nothing if it did not start).
node_url() {
    for _ in $(seq 100); do grep -q "listening on" "$1" && break; sleep 0.1; done
    grep -a "listening on" "$1" | grep -ao "http://127.0.0.1:[0-9]*" | head -1
}
# start_node BINARY DIR: starts a durable single node (plain-text peer listener) on data
# directory DIR/node, logging to DIR/node.log; sets NODE (its pid, also added to PIDS) and
# URL (its client address), or exits if it did not start. ADMIN is the admin key.
start_node() {
    TANDEM_TLS__PEER_PLAINTEXT=true "$1" node --data-dir "$2/node" --listen 127.0.0.1:0 \
        --peer-listen 127.0.0.1:0 --write-key bench-write-key-not-secret --admin-key "$ADMIN" \
        >"$2/node.log" 2>&1 &
    NODE=$!; PIDS+=("$NODE")
    URL=$(node_url "$2/node.log")
    [ -n "$URL" ] || { echo "$1: the node did not start:"; cat "$2/node.log"; exit 1; }
}
