#!/usr/bin/env bash
# Everything CI runs: set up, static checks, the Ansible checks, then the test suites.
#   unit          data-driven tests of the core's tool wrappers and the agent's parts; real LVM on loop PVs
#   conformance   a real agent over its socket, real loop devices, mkfs and mounts: file pool, then lvm pool
#   iscsi         real tgtd + libiscsi: exports through the agent's own RPCs
#   integration   real ansible-playbook runs of the collection's modules
#   vm            the real-kernel tier: Debian VMs under QEMU (device-mapper, LIO, open-iscsi)
# The VM tier's one-VM streams run beside the host's suites (a TCG guest leaves much of its core idle while
# Molecule's controller or a disk works: the two overlap in about the time of the longer), its two-VM
# stream after them; its output follows theirs. Extra arguments go to every pytest run (e.g. -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== static checks"
scripts/lint.sh
echo "== Ansible checks"
scripts/ansible-checks.sh
pytest=(python3 -m pytest -q -p no:cacheprovider)
echo "== real-kernel VM tier, streams 1 and 2 (in the background; their output comes at the end)"
vm_log=$(mktemp /tmp/basalt-vm-tier-XXXXXX.log)
# its own process group (setsid), so that stopping it stops its pytest runs and guests too
BASALT_VM_STREAMS="1 2" setsid scripts/vm-tier.sh "$@" >"$vm_log" 2>&1 &
vm_pid=$!
# A failing host suite stops this script: the background streams stop with it.
# shellcheck disable=SC2317 # called by the traps below
stop_vm_streams() { kill -- -"$vm_pid" 2>/dev/null || true; rm -f "$vm_log"; }
trap stop_vm_streams EXIT
# Loop devices, a VG in the system's LVM config and a tgt target that are not the tests': the suites
# must neither need their absence nor touch them (tests/unit/test_foreign_objects.py checks them).
foreign=$(mktemp /tmp/basalt-foreign-XXXXXX.json)
trap 'python3 tests/foreign_objects.py down "$foreign"; stop_vm_streams' EXIT
python3 tests/foreign_objects.py up "$foreign"
export BASALT_FOREIGN_OBJECTS=$foreign
echo "== unit, conformance (file pool), iscsi and integration tests"
"${pytest[@]}" -m "not vm" tests "$@"
echo "== conformance on the lvm pool (loop activation)"
"${pytest[@]}" tests/conformance --pool-kind lvm-loop "$@"
echo "== the foreign objects are intact"
"${pytest[@]}" tests/unit/test_foreign_objects.py
python3 tests/foreign_objects.py down "$foreign"
trap stop_vm_streams EXIT
unset BASALT_FOREIGN_OBJECTS
echo "== real-kernel VM tier, stream 3 (two VMs)"
status=0
BASALT_VM_STREAMS=3 scripts/vm-tier.sh "$@" || status=1
echo "== real-kernel VM tier, streams 1 and 2"
wait "$vm_pid" || status=1
cat "$vm_log"
exit "$status"
