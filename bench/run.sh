#!/usr/bin/env bash
# npm run bench: prepare (npm ci, Debian packages, nginx for the comparison column), build, then
# run the benchmark with a bounded time. Settings: BENCH_* variables (bench/main.ts, SETTINGS).
# Results: a table on stdout, JSON and Markdown in bench/results/. Non-interactive.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

say() { echo "bench: $*" >&2; }

bash scripts/bootstrap.sh

# nginx's mail proxy is the comparison column; without it the column is skipped.
NGINX_PACKAGES=(nginx libnginx-mod-mail)
nginx_missing=()
for pkg in "${NGINX_PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  if [ "$status" != "installed" ]; then nginx_missing+=("$pkg"); fi
done
if [ "${#nginx_missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    policy_ours=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      # Keep Debian from starting the packaged nginx on port 80 while it installs (removed after).
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      policy_ours=1
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    say "installing ${nginx_missing[*]} (the nginx comparison column)"
    apt-get update -q </dev/null >&2
    apt-get install -y -q "${nginx_missing[@]}" </dev/null >&2
    if [ "$policy_ours" = "1" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  else
    say "nginx's mail proxy is not installed: the nginx column is skipped. To include it:"
    echo "sudo apt-get install -y ${nginx_missing[*]}"
    export BENCH_NGINX=0
  fi
fi

# 10,000 idle sessions need 20,000+ descriptors in mailfront: raise the limit as far as allowed.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
say "open-file limit: $(ulimit -n)"

npx tsc -p tsconfig.json

export BENCH_COMMAND="npm run bench${*:+ -- $*}"
limit="${BENCH_TIMEOUT_S:-1800}"
# The bench stops itself after BENCH_TIMEOUT_S; timeout(1) is the backstop (SIGTERM: the harness
# kills every server it started).
# --experimental-websocket (Node >= 20.10): the bench forces a GC in mailfront through its
# inspector before reading its memory (bench/inspector.ts); without it, only RSS as found is given.
node_flags=(--enable-source-maps)
if node --experimental-websocket -e 0 >/dev/null 2>&1; then node_flags+=(--experimental-websocket); fi
if node --disable-warning=ExperimentalWarning -e 0 >/dev/null 2>&1; then node_flags+=(--disable-warning=ExperimentalWarning); fi
exec timeout --signal=TERM --kill-after=30 "$((limit + 60))" node "${node_flags[@]}" dist/bench/main.js "$@"
