#!/usr/bin/env bash
# Everything CI runs: set up, static checks, then the test suites.
#   unit          data-driven tests of the core's tool wrappers and the agent's parts; real LVM on loop PVs
#   conformance   a real agent over its socket: real loop devices, mkfs, mounts (root)
#   vm            the real-kernel tier: Debian VMs under QEMU (device-mapper, LIO, open-iscsi)
# Extra arguments go to every pytest run (e.g. -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== static checks"
scripts/lint.sh
pytest=(python3 -m pytest -q -p no:cacheprovider)
echo "== unit and conformance tests (file pool)"
"${pytest[@]}" -m "not vm" tests "$@"
echo "== real-kernel VM tier"
"${pytest[@]}" -m vm tests/vm "$@"
