#!/usr/bin/env bash
# Everything CI runs: set up, static checks, the Ansible checks, then the test suites.
#   unit          data-driven tests of the core's tool wrappers and the agent's parts; real LVM on loop PVs
#   conformance   a real agent over its socket, real loop devices, mkfs and mounts: file pool, then lvm pool
#   iscsi         real tgtd + libiscsi: exports through the agent's own RPCs
#   integration   real ansible-playbook runs of the collection's modules
#   vm            the real-kernel tier: Debian VMs under QEMU (device-mapper, LIO, open-iscsi)
# Extra arguments go to every pytest run (e.g. -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== static checks"
scripts/lint.sh
echo "== Ansible checks"
scripts/ansible-checks.sh
pytest=(python3 -m pytest -q -p no:cacheprovider)
# Loop devices, a VG in the system's LVM config and a tgt target that are not the tests': the suites
# must neither need their absence nor touch them (tests/unit/test_foreign_objects.py checks them).
foreign=$(mktemp /tmp/basalt-foreign-XXXXXX.json)
trap 'python3 tests/foreign_objects.py down "$foreign"' EXIT
python3 tests/foreign_objects.py up "$foreign"
export BASALT_FOREIGN_OBJECTS=$foreign
echo "== unit, conformance (file pool), iscsi and integration tests"
"${pytest[@]}" -m "not vm" tests "$@"
echo "== conformance on the lvm pool (loop activation)"
"${pytest[@]}" tests/conformance --pool-kind lvm-loop "$@"
echo "== the foreign objects are intact"
"${pytest[@]}" tests/unit/test_foreign_objects.py
python3 tests/foreign_objects.py down "$foreign"
trap - EXIT
unset BASALT_FOREIGN_OBJECTS
echo "== real-kernel VM tier"
scripts/vm-tier.sh "$@"
