#!/usr/bin/env bash
# Runs tests/test_migrations.py::test_racing_openers_create_the_schema_once[sqlite] (six
# threads open one new SQLite store at once) RUNS times in one pytest process, while
# LOAD busy loops keep the CPUs busy, and prints how many runs passed and failed.
# The busy loops are bounded (`timeout`) and killed when the script exits.
#   scripts/race_sqlite_open.sh [RUNS=200] [LOAD=$(nproc)]     (PY=python to use another one)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-200}
LOAD=${2:-$(nproc)}
PY=${PY:-.venv/bin/python}
LOG=$(mktemp)
TEST="tests/test_migrations.py::test_racing_openers_create_the_schema_once"

LOADERS=()
cleanup() {
    for pid in "${LOADERS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${LOADERS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "$LOG"
}
trap cleanup EXIT
for _ in $(seq "$LOAD"); do
    timeout 900 sh -c 'while :; do :; done' &
    LOADERS+=($!)
done

echo "== $TEST[sqlite] x $RUNS, $LOAD busy loops on $(nproc) CPUs, SQLite $("$PY" -c 'import sqlite3; print(sqlite3.sqlite_version)')"
START=$SECONDS
set +e
PYTHONPATH="$PWD:$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -p no:cacheprovider \
    -p pytest_repeat_plugin --repeat "$RUNS" -k sqlite "$TEST" > "$LOG" 2>&1
STATUS=$?
set -e
grep -E "^(FAILED|E +maas_tune|E +.*CacheError)" "$LOG" | sort | uniq -c | head -20 || true
PASSED=$(grep -oE "[0-9]+ passed" "$LOG" | grep -oE "[0-9]+" || echo 0)
FAILED=$(grep -oE "[0-9]+ failed" "$LOG" | grep -oE "[0-9]+" || echo 0)
echo "runs: $RUNS  passed: $PASSED  failed: $FAILED  wall: $((SECONDS - START)) s"
if [ "$((PASSED + FAILED))" -ne "$RUNS" ]; then tail -20 "$LOG"; fi
[ "$STATUS" -eq 0 ]
