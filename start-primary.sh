#!/usr/bin/env bash
# Two-node demo, first node: :7300 with ./data, sharing the store ./shared.
set -euo pipefail
cd "$(dirname "$0")"
make --quiet install
exec .venv/bin/helios serve --listen 127.0.0.1:7300 --data-dir ./data --shared-store ./shared "$@"
