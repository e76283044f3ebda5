#!/usr/bin/env bash
# The whole suite, several times in a row, with two CPU-bound processes beside it: the check that
# a test does not flake on a busy 2-core machine (issue 23). No test is retried.
#
#   scripts/stress-suite.sh [RUNS] [-- PYTEST ARGS...]    (RUNS defaults to 3)
#
# Uses .venv/bin/python (the README's test set-up) unless PYTHON says otherwise. Prints one line
# per run (its summary and wall time) and exits non-zero if any run failed. Like the README's
# command it runs one pytest worker per core (`-n auto`); `-- -n 0` runs the suite in one process.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=3
if [ $# -gt 0 ] && [ "$1" != "--" ]; then runs=$1; shift; fi
[ "${1:-}" = "--" ] && shift
python=${PYTHON:-.venv/bin/python}

busy=()
stop_busy() { for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null; done; wait 2>/dev/null; }
trap stop_busy EXIT INT TERM
for _ in 1 2; do
    python3 -c 'while True: pass' &
    busy+=($!)
done

failed=0
logdir=$(mktemp -d)
for run in $(seq 1 "$runs"); do
    start=$(date +%s)
    "$python" -m pytest -n auto -q -p no:cacheprovider "$@" >"$logdir/run$run.log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|passed|failed|error' "$logdir/run$run.log" | tail -n 1)
    echo "run $run: rc=$rc ${took}s  $summary"
    [ $rc -eq 0 ] || failed=1
done
echo "logs: $logdir"
exit $failed
