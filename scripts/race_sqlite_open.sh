#!/usr/bin/env bash
# Runs tests/test_migrations.py::test_racing_openers_create_the_schema_once[sqlite] (six
# threads open one new SQLite store at once) RUNS times in one pytest process, while
# LOAD busy loops keep the CPUs busy, and prints how many runs passed and failed.
# The busy loops are bounded (`timeout`) and killed when the script exits.
#   scripts/race_sqlite_open.sh [RUNS=200] [LOAD=$(nproc)]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-200}
LOAD=${2:-$(nproc)}
PY=${PY:-/work/main/.venv/bin/python}
[ -x "$PY" ] || PY=.venv/bin/python
TEST="tests/test_migrations.py::test_racing_openers_create_the_schema_once"

LOADERS=()
cleanup() {
    for pid in "${LOADERS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${LOADERS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
for _ in $(seq "$LOAD"); do
    timeout 900 sh -c 'while :; do :; done' &
    LOADERS+=($!)
done

echo "== $TEST[sqlite] x $RUNS, $LOAD busy loops on $(nproc) CPUs, SQLite $("$PY" -c 'import sqlite3; print(sqlite3.sqlite_version)')"
START=$(date +%s.%N)
set +e
PYTHONPATH="$PWD:$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -p no:cacheprovider \
    -p pytest_repeat_plugin --repeat "$RUNS" -k sqlite "$TEST" > /tmp/race_sqlite_open.$$.log 2>&1
STATUS=$?
set -e
END=$(date +%s.%N)
grep -E "^(FAILED|E +maas_tune|E +.*CacheError)" /tmp/race_sqlite_open.$$.log | sort | uniq -c | head -20 || true
PASSED=$(grep -oE "[0-9]+ passed" /tmp/race_sqlite_open.$$.log | grep -oE "[0-9]+" || echo 0)
FAILED=$(grep -oE "[0-9]+ failed" /tmp/race_sqlite_open.$$.log | grep -oE "[0-9]+" || echo 0)
rm -f /tmp/race_sqlite_open.$$.log
echo "runs: $RUNS  passed: $PASSED  failed: $FAILED  wall: $(printf "%.0f" "$(echo "$END - $START" | bc)") s"
[ "$STATUS" -eq 0 ]
