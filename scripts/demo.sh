#!/usr/bin/env bash
# The main job, end to end: set up, start the agent on the embedded file pool,
# and walk one volume through its life over the agent's own CSI socket.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec python3 scripts/demo.py "$@"
