#!/bin/sh
# Loads data.ldif into an empty database on first start, then runs slapd in the foreground.
set -eu
conf=/etc/mailfront-ldap/slapd.conf
data=/var/lib/mailfront-ldap
if [ ! -e "$data/data.mdb" ]; then
  slapadd -q -f "$conf" -l /etc/mailfront-ldap/data.ldif
fi
chown -R openldap:openldap "$data"
exec slapd -f "$conf" -h "ldap:///" -u openldap -g openldap -d "${SLAPD_DEBUG_LEVEL:-0}"
