#!/usr/bin/env bash
# npm test: bootstrap (npm ci, Debian packages, Cyrus), build, then run every test file with
# node's test runner (TAP output ends with "# pass N" / "# fail N"). A run of zero tests fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
rm -rf dist
npx tsc -p tsconfig.json
mapfile -t files < <(find dist/test -name '*.test.js' | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "test: no test files were built" >&2
  exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
node --enable-source-maps --test --test-reporter=tap --test-timeout=300000 "$@" "${files[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if ! grep -Eq '^# pass [1-9]' "$log"; then
  echo "test: no test passed (a run of zero tests is a failure)" >&2
  exit 1
fi
exit "$status"
