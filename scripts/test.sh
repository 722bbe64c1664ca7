#!/usr/bin/env bash
# npm test: bootstrap (npm ci, Debian packages, Cyrus), build, then run every test file with
# node's test runner (TAP output ends with "# pass N" / "# fail N"). A run of zero tests fails, and
# so does a run with skipped tests (a skipped test checked nothing), unless the skips were asked for:
# MAILFRONT_TEST_ALLOW_SKIPS=1, or a name filter given to the runner (--test-name-pattern, which
# reports the tests it leaves out as skipped). On the CI machine (Debian 12, root, the packages
# scripts/bootstrap.sh installs, systemd's systemd-analyze) no test has a reason to skip.
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
main_log=$(mktemp)
scan_log=$(mktemp)
trap 'rm -rf "$main_log" "$scan_log" "$MAILFRONT_TEST_LOG_DIR"' EXIT
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
# every test process's stdout blocking (test/blocking-stdout.ts). A file still running at 80 % of
# the timeout writes on stderr what it waits on (test/stall-report.ts).
force_exit=()
if node --test-force-exit -e '' 2>/dev/null; then force_exit=(--test-force-exit --import ./dist/test/blocking-stdout.js --import ./dist/test/stall-report.js); fi
# Two test files at a time (node's default is one fewer than the CPUs: one on a 2-core machine):
# most files spend their time waiting on servers starting, timers and sockets. Files share
# nothing: each starts its servers on fresh ports in temp dirs of its own, and a port that must
# refuse connections is held so that the other file cannot draw it (test/integration/servers/
# ports.ts: refusingPort(), and restartable()'s stopped daemons). `npm test -- --test-concurrency=1`
# runs them one at a time (the later option wins). The secret scan runs after them, on its own.
set +e
node --enable-source-maps --test --test-concurrency=2 --test-reporter=tap --test-timeout=300000 "${force_exit[@]}" "$@" "${main[@]}" 2>&1 | tee "$main_log"
status=${PIPESTATUS[0]}
if [ "${#scan[@]}" -gt 0 ]; then
  node --enable-source-maps --test --test-reporter=tap --test-timeout=300000 "${force_exit[@]}" "$@" "${scan[@]}" 2>&1 | tee "$scan_log"
  scan_status=${PIPESTATUS[0]}
  if [ "$status" -eq 0 ]; then status=$scan_status; fi
fi
set -e
# The sum of one closing count ("# pass N", "# fail N", "# skipped N") over the given logs.
count() {
  local key=$1
  shift
  awk -v key="$key" '$0 ~ "^# " key " [0-9]+$" { n += $3 } END { print n + 0 }' "$@"
}
# The main run on its own: the secret scan's one test passing must not hide a main run that ran nothing.
if [ "$(count pass "$main_log")" -eq 0 ]; then
  echo "test: no test passed in the main run (a run of zero tests is a failure)" >&2
  exit 1
fi
# One closing line for both runs (each printed its own "# pass" / "# fail").
passed=$(count pass "$main_log" "$scan_log")
failed=$(count fail "$main_log" "$scan_log")
skipped=$(count skipped "$main_log" "$scan_log")
cancelled=$(count cancelled "$main_log" "$scan_log")
skips_allowed=${MAILFRONT_TEST_ALLOW_SKIPS:-0}
for arg in "$@"; do
  case "$arg" in --test-name-pattern* | --test-skip-pattern* | --test-only) skips_allowed=1 ;; esac
done
if [ "$skipped" -gt 0 ] && [ "$skips_allowed" != "1" ]; then
  echo "test: ${skipped} test(s) skipped, so checked nothing (set MAILFRONT_TEST_ALLOW_SKIPS=1 where a skip is expected):" >&2
  grep -hE '^ *(not )?ok [0-9]+ - .* # SKIP' "$main_log" "$scan_log" | sed 's/^ */  /' >&2 || true
  if [ "$status" -eq 0 ]; then status=1; fi
fi
# CI keeps only the end of the output: name each failed or cancelled test there, with where it
# failed and its error's first lines (a suite failing only because a test in it failed is left
# out). Node counts a test as cancelled, not failed, when its suite's before() hook failed (the
# suite is listed with the hook's error) or when its file's event loop emptied while it waited.
if [ "$failed" -gt 0 ] || [ "$cancelled" -gt 0 ]; then
  echo "failed or cancelled:"
  awk '
    function flush() {
      if (name != "" && type != "subtestsFailed") {
        print "  " name
        if (where != "") print "    at " where
        for (i = 1; i <= nerr && i <= 12; i++) print "    " err[i]
      }
      name = ""
    }
    match($0, /^ *not ok [0-9]+ - /) {
      flush()
      name = substr($0, RLENGTH + 1)
      indent = index($0, "n") - 1
      where = ""; type = ""; nerr = 0; inerr = 0
      next
    }
    name == "" { next }
    {
      line = substr($0, indent + 3)
      lead = match($0, /[^ ]/) - 1
      if ($0 ~ /^ *\.\.\.$/ && lead == indent + 2) { flush(); next }
      if (inerr) {
        if ($0 ~ /^ *$/) next
        if (lead > indent + 2) { sub(/^ +/, "", line); if (line != "") err[++nerr] = line; next }
        inerr = 0
      }
      if (line ~ /^location: /) { where = substr(line, 11); gsub(/\047/, "", where) }
      else if (line ~ /^failureType: /) { type = substr(line, 14); gsub(/\047/, "", type) }
      else if (line ~ /^error: \|-?$/) inerr = 1
      else if (line ~ /^error: /) { e = substr(line, 8); gsub(/^\047|\047$/, "", e); if (e != "") err[++nerr] = e }
    }
    END { flush() }
  ' "$main_log" "$scan_log"
fi
echo "${passed} passed, ${failed} failed, ${cancelled} cancelled, ${skipped} skipped"
exit "$status"
