#!/usr/bin/env bash
# The real-kernel VM tier (tests/vm, docs/vm-tier.md) as CI runs it: required (a missing QEMU fails
# instead of skipping), images and wheel sets made once up front, then the test files in two pytest
# streams at once. A TCG guest keeps about one host core busy, so two streams on a 2-core machine take
# about half the time of one. Each stream's output is shown when it ends; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export BASALT_VM_REQUIRED=1
python3 tests/vm/build_image.py >/dev/null
python3 tests/vm/build_image.py --variant systemd >/dev/null
(cd tests/vm && python3 -c 'import pydeps; pydeps.ensure(); pydeps.ensure_ansible(); pydeps.ensure_wheels()')

pytest=(python3 -m pytest -q -p no:cacheprovider -m vm -rs)
# Balanced by measured time (2026-11-25, one stream, images cached): test_vm_tier 7.2 min,
# test_vm_modules 5.3, test_vm_iscsi_agent 4.2; test_vm_operator 2.5-3.5 (2026-12-04, 2.5 at light load,
# 3.5 beside two other guests); test_vm_chaos 9.9-12.5 at load 6-8 (2026-12-04; not measured on a quiet
# host); the roles' Molecule scenario default 12.0 at load 1-4, 18.9 at load 5-7 (test_vm_molecule, 2026-12-04; step times
# in docs/vm-tier.md).
# Not in a stream (over this tier's budget; docs/vm-tier.md): test_vm_molecule_iscsi's two-VM scenario
# (its fake-QEMU self-test is in)
# and test_vm_molecule's uninstall and lvm scenarios (11.4 min at load 5-7, 7.5 at load 1-2; green by hand).
molecule=tests/vm/test_vm_molecule.py
pair=tests/vm/test_vm_molecule_iscsi.py
streams=(
  "$molecule::test_molecule_default_on_the_systemd_vm_over_ssh $molecule::test_ssh_vm_gives_up_when_sshd_never_answers $molecule::test_ssh_vm_retries_a_taken_port_then_fails $pair::test_ssh_vm_pair_starts_paused_link_down_and_gives_up_cleanly tests/vm/test_vm_modules.py tests/vm/test_vm_operator.py"
  "tests/vm/test_vm_tier.py tests/vm/test_vm_chaos.py tests/vm/test_vm_iscsi_agent.py"
)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
for i in "${!streams[@]}"; do
  # shellcheck disable=SC2086 # each stream is a list of test files
  "${pytest[@]}" ${streams[$i]} "$@" >"$logs/$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  echo "-- VM stream $((i + 1)): ${streams[$i]} (rc $rc)"
  cat "$logs/$i.log"
  ((rc == 0)) || status=1
done
exit "$status"
