#!/usr/bin/env bash
# Two-node demo, second node: :7400 with ./replica, the same store ./shared and
# the primary's secret files (control key, JWT secret), so a token minted on
# one node is accepted on the other. Start ./start-primary.sh first.
set -euo pipefail
cd "$(dirname "$0")"
make --quiet install
for _ in $(seq 1 100); do
  [ -f ./data/secrets/control.key ] && [ -f ./data/secrets/jwt.secret ] && break
  sleep 0.1
done
if [ ! -f ./data/secrets/jwt.secret ]; then
  echo "start-replica.sh: ./data/secrets is missing: run ./start-primary.sh first" >&2
  exit 1
fi
export HELIOS_CONTROL_KEY_PATH="${HELIOS_CONTROL_KEY_PATH:-$PWD/data/secrets/control.key}"
export HELIOS_JWT_SECRET_PATH="${HELIOS_JWT_SECRET_PATH:-$PWD/data/secrets/jwt.secret}"
if [ -z "${HELIOS_ADMIN_PASSWORD:-}" ] && [ -f ./data/secrets/admin.password ]; then
  HELIOS_ADMIN_PASSWORD="$(cat ./data/secrets/admin.password)"
  export HELIOS_ADMIN_PASSWORD
fi
exec .venv/bin/helios serve --listen 127.0.0.1:7400 --data-dir ./replica --shared-store ./shared "$@"
