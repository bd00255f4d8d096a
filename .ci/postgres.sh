#!/usr/bin/env bash
# PostgreSQL server binaries for the ledger tests (tests/pg.py starts its own throwaway
# cluster from them). Idempotent: does nothing when Debian's initdb is already there.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "postgresql: $(compgen -G '/usr/lib/postgresql/*/bin/initdb' | head -n1) present"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || {
    echo "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found" >&2
    exit 1
}
