#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl, postgres) are installed, from Debian's
# packages if missing. The accounts tests start their own throw-away server on 127.0.0.1 with them.
set -euo pipefail
have_pg() { ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; }
if have_pg; then
  echo "ensure_postgres: found $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | head -1 || command -v pg_ctl)"
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq postgresql >/dev/null
have_pg && echo "ensure_postgres: installed $(ls -d /usr/lib/postgresql/*/bin | head -1)"
