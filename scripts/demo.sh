#!/usr/bin/env bash
# npm run demo: bootstrap (npm ci, Debian packages), build, then run the sandbox in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
npx tsc -p tsconfig.json
exec node --enable-source-maps dist/scripts/demo.js
