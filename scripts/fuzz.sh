#!/usr/bin/env bash
# Runs the pre-auth fuzz properties (test/fuzz/*.fuzz.test.ts) for as long as asked:
#   scripts/fuzz.sh [SECONDS]        default 60; every fuzz file runs for SECONDS, all in parallel
# npm test runs the same properties for a few seconds each. A failure prints fast-check's
# shrunk counterexample and its seed; replay it with MAILFRONT_FUZZ_SEED=<seed> scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || (( seconds < 1 )); then
  echo "usage: scripts/fuzz.sh [SECONDS]" >&2
  exit 2
fi
[ -d node_modules ] || npm ci
# Built inside the repository (dist*/ is ignored by git) so that node_modules resolves.
out=dist-fuzz
rm -rf "$out"
npx tsc -p tsconfig.json --outDir "$out"
mapfile -t files < <(find "$out/test/fuzz" -name '*.fuzz.test.js' | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "fuzz: no fuzz test files were built" >&2
  exit 1
fi
echo "fuzz: ${#files[@]} files for ${seconds} s each"
# One node process per file, all at once (node's --test-concurrency needs Node 20.10); each
# file's report is printed whole when it ends, and the run fails if any file failed.
pids=()
for f in "${files[@]}"; do
  MAILFRONT_FUZZ_SECONDS=$seconds node --enable-source-maps --test --test-reporter=spec "$f" >"$f.log" 2>&1 &
  pids+=("$!")
done
failed=0
for i in "${!files[@]}"; do
  if wait "${pids[$i]}"; then status=passed; else status=FAILED; failed=1; fi
  echo "== ${files[$i]#"$out/"}: $status"
  cat "${files[$i]}.log"
done
exit "$failed"
