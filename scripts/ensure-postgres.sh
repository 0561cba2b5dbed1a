#!/usr/bin/env bash
# Installs PostgreSQL's server binaries from Debian's packages when no pg_ctl is found.
# The tests start their own throw-away cluster; nothing here starts a service.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  exit 0
fi
echo "PostgreSQL server not found: installing it from Debian's packages" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq postgresql >/dev/null
