#!/usr/bin/env bash
# npm run demo: bootstrap for the demo only (npm ci, the Debian packages it uses; no Cyrus, none of
# the test suite's other servers), build, then run the sandbox in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
# The servers' tools (slapadd, saslpasswd2, slapd) live in /usr/sbin, which a root shell from
# `su` without `-` does not have on its PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
bash scripts/bootstrap.sh --demo
npx tsc -p tsconfig.json
exec node --enable-source-maps dist/scripts/demo.js
