#!/usr/bin/env bash
# npm test: bootstrap (npm ci, Debian packages, Cyrus), build, then run every test file with
# node's test runner (TAP output ends with "# pass N" / "# fail N"). A run of zero tests fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# The servers' tools (slapadd, saslpasswd2, slapd) live in /usr/sbin, which a root shell from
# `su` without `-` does not have on its PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
bash scripts/bootstrap.sh
rm -rf dist
npx tsc -p tsconfig.json
mapfile -t files < <(find dist/test -name '*.test.js' | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "test: no test files were built" >&2
  exit 1
fi
# test/integration/abuse.test.ts holds thousands of connections open: take every file descriptor allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Every mailfront log line of the suite and every registered secret land here (test/integration/
# front.ts); the secret scan (zz-secrets.test.js) reads them after all other test files have run.
MAILFRONT_TEST_LOG_DIR=$(mktemp -d)
export MAILFRONT_TEST_LOG_DIR
log=$(mktemp)
trap 'rm -rf "$log" "$MAILFRONT_TEST_LOG_DIR"' EXIT
main=()
scan=()
for file in "${files[@]}"; do
  case "$file" in
    */zz-secrets.test.js) scan+=("$file") ;;
    *) main+=("$file") ;;
  esac
done
# A test file whose before() fails halfway (one daemon up, the next refused) would keep its
# process alive through the daemons it started and hang the run: once its tests are done, the
# file's process exits, and the harness's exit hook kills what it started (Node >= 20.14).
# Its early exit can drop a file's last verdicts on their way through a pipe: a preload makes
# every test process's stdout blocking (test/blocking-stdout.ts).
force_exit=()
if node --test-force-exit -e '' 2>/dev/null; then force_exit=(--test-force-exit --import ./dist/test/blocking-stdout.js); fi
set +e
node --enable-source-maps --test --test-reporter=tap --test-timeout=300000 "${force_exit[@]}" "$@" "${main[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "${#scan[@]}" -gt 0 ]; then
  node --enable-source-maps --test --test-reporter=tap --test-timeout=300000 "${force_exit[@]}" "$@" "${scan[@]}" 2>&1 | tee -a "$log"
  scan_status=${PIPESTATUS[0]}
  if [ "$status" -eq 0 ]; then status=$scan_status; fi
fi
set -e
if ! grep -Eq '^# pass [1-9]' "$log"; then
  echo "test: no test passed (a run of zero tests is a failure)" >&2
  exit 1
fi
# One closing line for both runs (each printed its own "# pass" / "# fail").
passed=$(awk '/^# pass [0-9]+$/ { n += $3 } END { print n + 0 }' "$log")
failed=$(awk '/^# fail [0-9]+$/ { n += $3 } END { print n + 0 }' "$log")
echo "${passed} passed, ${failed} failed"
exit "$status"
