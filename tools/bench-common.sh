# Sourced by tools/bench-*.sh after they set TANDEM: a temporary work directory (WORK),
# removed at exit, and the pids the script started (PIDS), stopped at exit by pid only —
# SIGINT first, SIGKILL for any still running 2 s later.
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
