#!/usr/bin/env bash
# Reproduces RESULTS.md: raw fsync cost, then each engine x batch size, twice, interleaved.
# About 10 minutes of measurement on 2 cores (plus waiting for the machine to be quiet);
# writes the raw output to results/run.log.
#
# Each run is preceded by a wait (at most 60 s) for other processes to go quiet and followed
# by the CPU time other processes used while it ran, since a shared machine skews the numbers.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="$PWD/target"
cargo build --release --quiet
bin=target/release/storage-bench
mkdir -p results data

busy_ticks() { # CPU ticks (1/100 s) the whole machine spent busy
  awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat
}

wait_quiet() { # until CPU pressure (avg10) drops below 10%, for at most 60 s
  for _ in $(seq 60); do
    awk -F'[ =]' '/^some/{exit !($3 < 10)}' /proc/pressure/cpu && return
    sleep 1
  done
  echo "(machine still busy after 60 s; measuring anyway)"
}

measure() { # runs the benchmark with "$@" and reports CPU used by other processes meanwhile
  wait_quiet
  local before start
  before=$(busy_ticks)
  start=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o data/own-cpu "$bin" "$@"
  awk -v b="$before" -v a="$(busy_ticks)" -v s="$start" -v e="$(date +%s.%N)" \
    -v own="$(awk '{print $1+$2}' data/own-cpu)" \
    'BEGIN{w=e-s; f=(a-b)/100-own; if(f<0)f=0;
           printf "other processes: %.0f CPU-s over %.0f s wall (%.2f of 2 cores)\n", f, w, f/w}'
}

{
  echo "# $(date -u +%FT%TZ) nproc=$(nproc) kernel=$(uname -r)"
  df -hT data | tail -1
  measure fsync --data-dir data
  for run in 1 2; do
    for engine in redb fjall; do
      echo "## run $run"
      measure run --engine "$engine" --batch 1000 --events 1000000 --concurrent-events 200000
      echo "## run $run"
      measure run --engine "$engine" --batch 100 --events 200000 --concurrent-events 100000
    done
  done
  measure fsync --data-dir data
} 2>&1 | tee results/run.log
rm -f data/own-cpu
rmdir data 2>/dev/null || true
