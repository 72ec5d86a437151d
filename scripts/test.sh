#!/usr/bin/env bash
# Everything CI runs: set up, static checks, then the test suites.
#   unit         data-driven tests of the core's tool wrappers and the agent's parts
#   conformance  a real agent over its socket: real loop devices, mkfs, mounts (root)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== static checks"
scripts/lint.sh
echo "== tests"
python3 -m pytest -q -m "not vm" -p no:cacheprovider tests "$@"
