#!/usr/bin/env bash
# Prepares everything the tests and the demo need:
#   1. node_modules (npm ci when missing or older than package-lock.json)
#   2. Debian packages for the real servers (slapd, 389 Directory Server, Dovecot, SASL, openssl, Cyrus' libraries)
#   3. Cyrus IMAP unpacked into <repo>/.cache/cyrus (it conflicts with Dovecot in apt, so it is
#      never installed; its .debs are fetched with `apt-get download` and unpacked with `dpkg -x`)
# Non-interactive: works with CI=true and without stdin. Messages are prefixed "bootstrap:".
# --demo: what `npm run demo` needs only (slapd, Dovecot, openssl, python3; no Cyrus), not the
#   test suite's other servers and tools.
# --packages-only (as root): step 2 alone, the command printed to a normal user missing packages.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

export DEBIAN_FRONTEND=noninteractive

say() { echo "bootstrap: $*" >&2; }
die() { echo "bootstrap: $*" >&2; exit 1; }

IS_ROOT=0
if [ "$(id -u)" = "0" ]; then IS_ROOT=1; fi

PACKAGES_ONLY=0
DEMO=0
for arg in "$@"; do
  case "$arg" in
    --packages-only) PACKAGES_ONLY=1 ;;
    --demo) DEMO=1 ;;
    *) die "unknown argument \"$arg\" (usage: bootstrap.sh [--demo] [--packages-only])" ;;
  esac
done
if [ "$PACKAGES_ONLY" = "1" ] && [ "$IS_ROOT" != "1" ]; then die "--packages-only installs Debian packages and must run as root"; fi

# --- 1. node_modules -------------------------------------------------------------------------
if [ "$PACKAGES_ONLY" = "0" ] && { [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  say "installing node modules (npm ci)"
  npm ci --no-audit --no-fund </dev/null >&2
fi

# --- 2. Debian packages ----------------------------------------------------------------------
# Cyrus' own libraries need libical3 libpcre3 libxapian30 libjansson4 libpq5 libxml2 libsqlite3-0
# (cyrus-common's Depends, never installed: see step 3); python3 is a test client (poplib);
# systemd brings systemd-analyze, which checks the shipped unit (a container may lack it);
# 389-ds-base is 389 Directory Server (test/integration/servers/ds389.ts makes private instances;
# the package enables none).
PACKAGES=(slapd ldap-utils dovecot-imapd dovecot-pop3d dovecot-managesieved sasl2-bin libsasl2-modules
  libsasl2-modules-db libical3 libpcre3 libxapian30 libjansson4 libpq5 libxml2 libsqlite3-0 openssl
  389-ds-base redis-server haproxy prometheus sieve-connect systemd python3)
# The demo (scripts/demo.ts) starts slapd (loaded with ldapmodify) and Dovecot for IMAP and POP3,
# makes its certificates with openssl, and prints python3 and openssl commands to try it.
DEMO_PACKAGES=(slapd ldap-utils dovecot-imapd dovecot-pop3d openssl python3)
if [ "$DEMO" = "1" ]; then PACKAGES=("${DEMO_PACKAGES[@]}"); fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  if [ "$status" != "installed" ]; then missing+=("$pkg"); fi
done

POLICY_RC_D_OURS=0
ensure_policy_rc_d() {
  # Keep Debian from starting the packaged daemons on their default ports while they install;
  # removed again afterwards (remove_policy_rc_d), so later apt runs start services as usual.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    say "writing /usr/sbin/policy-rc.d (exit 101) while packages install, so packaged daemons do not start"
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    POLICY_RC_D_OURS=1
    trap remove_policy_rc_d EXIT
  fi
}
remove_policy_rc_d() {
  if [ "$POLICY_RC_D_OURS" = "1" ]; then
    rm -f /usr/sbin/policy-rc.d
    POLICY_RC_D_OURS=0
  fi
}

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = "0" ]; then
    apt-get update -q -o DPkg::Lock::Timeout=300 </dev/null >&2
    APT_UPDATED=1
  fi
}

# The packaged daemons this script installed are never used (every test and the demo run private
# instances): they are kept from starting at boot as well, not only during the install. Only the
# units of packages it installed: a daemon the machine had before is left as it was.
disable_unit() {
  if [ -e "/lib/systemd/system/$1.service" ] || [ -e "/etc/init.d/$1" ]; then
    # Works without a running systemd (only links change); update-rc.d covers the SysV scripts.
    systemctl disable --quiet "$1" 2>/dev/null || true
    update-rc.d "$1" disable >/dev/null 2>&1 || true
  fi
}
# The daemons' units that packages "$@" bring.
packaged_units() {
  local pkg dovecot_done=0
  for pkg in "$@"; do
    case "$pkg" in
      slapd | redis-server | haproxy | prometheus) echo "$pkg" ;;
      dovecot-*) if [ "$dovecot_done" = "0" ]; then echo dovecot; dovecot_done=1; fi ;;
    esac
  done
}
disable_packaged_daemons() {
  local unit
  for unit in $(packaged_units "$@"); do disable_unit "$unit"; done
  # prometheus recommends its node exporter: disabled when this install brought it in.
  if [ "$NODE_EXPORTER_BEFORE" != "installed" ] \
    && [ "$(dpkg-query -W -f='${db:Status-Status}' prometheus-node-exporter 2>/dev/null || true)" = "installed" ]; then
    disable_unit prometheus-node-exporter
  fi
}
NODE_EXPORTER_BEFORE="$(dpkg-query -W -f='${db:Status-Status}' prometheus-node-exporter 2>/dev/null || true)"

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$IS_ROOT" = "1" ]; then
    ensure_policy_rc_d
    say "installing missing Debian packages: ${missing[*]}"
    apt_update_once
    # A fresh cloud image may be running unattended-upgrades: wait for its lock rather than fail.
    apt-get install -y -q -o DPkg::Lock::Timeout=300 "${missing[@]}" </dev/null >&2
    remove_policy_rc_d
    say "keeping the packaged daemons from starting at boot (the tests and the demo run their own)"
    disable_packaged_daemons "${missing[@]}"
  else
    # Not a bare `sudo apt-get install`: run as printed, it would start Debian's dovecot, slapd,
    # redis, haproxy and prometheus on their default ports and leave them enabled at boot.
    units="$(packaged_units "${missing[@]}" | tr '\n' ' ')"
    # prometheus recommends its node exporter, which apt then installs and starts too.
    case " $units" in *" prometheus "*) if [ "$NODE_EXPORTER_BEFORE" != "installed" ]; then units+="prometheus-node-exporter "; fi ;; esac
    say "missing Debian packages: ${missing[*]}"
    say "this installs them as root the way a root run does (packaged daemons kept from starting, and disabled at boot):"
    echo "sudo bash $(printf '%q' "$REPO_ROOT/scripts/bootstrap.sh")$([ "$DEMO" = "1" ] && echo ' --demo') --packages-only"
    say "or by hand, as root: keep apt from starting daemons (a /usr/sbin/policy-rc.d that exits 101, removed afterwards), apt-get update, DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}${units:+, then systemctl disable ${units% }}"
    case "${npm_lifecycle_event-}" in
      test) again="sudo npm test" ;;
      demo) again="sudo npm run demo" ;;
      *) again="this command again as root (sudo)" ;;
    esac
    if [ "$DEMO" = "1" ]; then again="sudo npm run demo"; fi
    say "then run $again: the tests and the demo hand daemon files to the daemons' own users"
    exit 1
  fi
fi
if [ "$PACKAGES_ONLY" = "1" ]; then
  say "the Debian packages are in place"
  exit 0
fi
if [ "$IS_ROOT" != "1" ]; then
  # The harness chowns Dovecot's and Cyrus' files to their system users, which needs root.
  if [ "$DEMO" = "1" ]; then die "the demo starts slapd and Dovecot as their own users and must run as root: sudo npm run demo"; fi
  die "the tests and the demo start slapd, Dovecot and Cyrus as their own users and must run as root: sudo npm test, or sudo npm run demo"
fi
if [ "$DEMO" = "1" ]; then
  # The demo runs no Cyrus: nothing to fetch from the Debian mirror.
  exit 0
fi

# --- 3. Cyrus IMAP, unpacked privately -------------------------------------------------------
CYRUS_ROOT="$REPO_ROOT/.cache/cyrus"
CYRUS_DEBS=(cyrus-common cyrus-imapd cyrus-pop3d cyrus-clients)

cyrus_manual_steps() {
  say "could not fetch Cyrus IMAP; run these steps (network access to the Debian mirror needed):"
  echo "(d=\$(mktemp -d) && cd \"\$d\" && apt-get download ${CYRUS_DEBS[*]} && mkdir -p '$CYRUS_ROOT' && for f in *.deb; do dpkg -x \"\$f\" '$CYRUS_ROOT'; done)"
}

if [ ! -x "$CYRUS_ROOT/usr/lib/cyrus/bin/master" ]; then
  # Neither `apt-get download` nor `dpkg -x` needs root; only refreshing the package lists does.
  say "fetching Cyrus IMAP (${CYRUS_DEBS[*]}) with apt-get download"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # As root, apt-get download runs as the _apt sandbox user, which must be able to write here.
  chmod 777 "$tmp"
  if ! (cd "$tmp" && apt-get download -q "${CYRUS_DEBS[@]}" </dev/null >&2); then
    if [ "$IS_ROOT" = "1" ]; then
      say "apt-get download failed; updating the package lists and retrying"
      apt_update_once
      if ! (cd "$tmp" && apt-get download -q "${CYRUS_DEBS[@]}" </dev/null >&2); then
        cyrus_manual_steps
        exit 1
      fi
    else
      say "apt-get download failed (the package lists may be stale: sudo apt-get update)"
      cyrus_manual_steps
      exit 1
    fi
  fi
  rm -rf "$CYRUS_ROOT.partial"
  mkdir -p "$CYRUS_ROOT.partial"
  for deb in "$tmp"/*.deb; do
    say "unpacking $(basename "$deb")"
    dpkg -x "$deb" "$CYRUS_ROOT.partial"
  done
  [ -x "$CYRUS_ROOT.partial/usr/lib/cyrus/bin/master" ] \
    || die "Cyrus master binary not found after unpacking"
  rm -rf "$CYRUS_ROOT"
  mv "$CYRUS_ROOT.partial" "$CYRUS_ROOT"
  rm -rf "$tmp"
  trap - EXIT
  say "Cyrus IMAP unpacked into $CYRUS_ROOT"
fi

# Every Cyrus binary the tests run must find its shared libraries (unpacked under the machine's
# multiarch folder: x86_64-linux-gnu, aarch64-linux-gnu, ...).
CYRUS_LIB_DIRS="$(find "$CYRUS_ROOT/usr/lib" -maxdepth 1 -type d -name '*-linux-gnu*' | tr '\n' ':')"
cyrus_missing="$(
  for bin in master imapd pop3d ctl_cyrusdb; do
    LD_LIBRARY_PATH="$CYRUS_LIB_DIRS" ldd "$CYRUS_ROOT/usr/lib/cyrus/bin/$bin" 2>/dev/null \
      | awk '/not found/ { print $1 }'
  done | sort -u | tr '\n' ' '
)"
if [ -n "$cyrus_missing" ]; then
  say "Cyrus IMAP in $CYRUS_ROOT cannot find these shared libraries: $cyrus_missing"
  say "install the Debian packages that provide them (apt-file search LIB), e.g. libical3 libpcre3 libxapian30"
  exit 1
fi

exit 0
