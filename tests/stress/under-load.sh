#!/usr/bin/env bash
# Run pytest on the given tests N times in a row under load: two CPU-burning loops and a
# direct-I/O writer (O_DIRECT, so the page cache does not absorb it), as on a busy CI
# machine. Stops at the first failing run and keeps its output.
#
#   tests/stress/under-load.sh RUNS PYTEST-ARGS...
#   e.g. tests/stress/under-load.sh 50 tests/faults/test_ctrl_c.py
#
# The load processes are ended by pid when the script ends, however it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:?usage: $0 RUNS PYTEST-ARGS...}
shift
PYTEST=${PYTEST:-/opt/t3backupd-dev/venv/bin/pytest}
scratch=$(mktemp -d /var/tmp/t3backupd-load.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
for _ in 1 2; do (while :; do :; done) & pids+=($!); done
(while :; do dd if=/dev/zero of="$scratch/direct" bs=1M count=256 oflag=direct status=none; done) &
pids+=($!)
for run in $(seq 1 "$runs"); do
  log="$scratch/run.log"
  if "$PYTEST" -q -p no:cacheprovider "$@" >"$log" 2>&1; then
    echo "run $run/$runs: $(tail -n 1 "$log")"
  else
    keep=/var/tmp/t3backupd-load-failure-$run.log
    cp "$log" "$keep"
    tail -n 80 "$log"
    echo "run $run/$runs FAILED (output kept in $keep)"
    exit 1
  fi
done
echo "$runs runs passed under load"
