#!/usr/bin/env bash
# Runs one e2e test N times in a row and counts the passes: for chasing flaky tests by
# hand, never in CI. The test and petrel are built once and copied into the log directory
# first, so editing the sources while the loop runs changes nothing; each run's output is
# kept. With REPEAT_LOG_DIR naming a directory that already holds both binaries, they are
# reused (build an older commit once, then compare it with the current one).
#
#   e2e/scripts/repeat-test.sh 20 leader one_replica_leads_and_a_standby_takes_over
set -euo pipefail
cd "$(dirname "$0")/../.."

runs="${1:?usage: $0 RUNS TEST_FILE [TEST_NAME]}"
file="${2:?usage: $0 RUNS TEST_FILE [TEST_NAME]}"
name="${3:-}"
logs="${REPEAT_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/petrel-repeat-$file.XXXXXX")}"
mkdir -p "$logs"

if [[ -x "$logs/test-$file" && -x "$logs/petrel" ]]; then
  echo "repeat-test: reusing the binaries in $logs"
else
cargo build -p petrel --bin petrel --quiet
test_bin="$(cargo test -p petrel-e2e --test "$file" --no-run --message-format=json --quiet |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target") or {}
    if m.get("executable") and "test" in t.get("kind", []) and t.get("name") == sys.argv[1]:
        print(m["executable"])' "$file" | tail -n 1)"
[[ -x "$test_bin" ]] || { echo "repeat-test: no test executable for $file" >&2; exit 1; }
cp "$test_bin" "$logs/test-$file"
cp "${CARGO_TARGET_DIR:-target}/debug/petrel" "$logs/petrel"
fi
export PETREL_OPERATOR_BIN="$logs/petrel"

filter=()
[[ -n "$name" ]] && filter=(--exact "$name")
passed=0
for ((run = 1; run <= runs; run++)); do
  log="$logs/run-$run.log"
  start=$SECONDS
  if "$logs/test-$file" "${filter[@]}" --nocapture >"$log" 2>&1; then
    passed=$((passed + 1)); verdict=pass
  else
    verdict=FAIL
  fi
  printf 'run %2d/%d: %s in %ss (%s)\n' "$run" "$runs" "$verdict" "$((SECONDS - start))" "$log"
done
printf '%d of %d runs passed; logs in %s\n' "$passed" "$runs" "$logs"
[[ $passed -eq $runs ]]
