#!/usr/bin/env bash
# The real-kernel VM tier (tests/vm, docs/vm-tier.md) as CI runs it: required (a missing QEMU fails
# instead of skipping), images and wheel sets made once up front (under their cache's locks, so two runs
# at once share them), then the test files in pytest streams, all at once. A TCG guest keeps at most
# about one host core busy (less under Molecule, whose controller it waits on), so two streams on a 2-core
# machine take about half the time of one. Each stream's output is shown when it ends; extra arguments go to
# pytest. BASALT_VM_STREAMS picks streams by number (default: all): scripts/test.sh runs streams 1 and 2
# beside the host's suites and stream 3 (two VMs at once) after them.
set -euo pipefail
cd "$(dirname "$0")/.."
export BASALT_VM_REQUIRED=1
python3 tests/vm/build_image.py >/dev/null
python3 tests/vm/build_image.py --variant systemd >/dev/null
(cd tests/vm && python3 -c 'import pydeps; pydeps.ensure(); pydeps.ensure_ansible(); pydeps.ensure_wheels()')

pytest=(python3 -m pytest -q -p no:cacheprovider -m vm -rs)
# Balanced by measured time (one stream each, images cached; step times in docs/vm-tier.md):
# test_vm_tier 7.2 min, test_vm_modules 5.3, test_vm_iscsi_agent 4.2 (2026-11-25); test_vm_operator
# 2.5-3.5, test_vm_chaos 9.9-12.5 at load 6-8 (2026-12-04); the Molecule scenarios default, lvm and
# uninstall on one boot 29.5 min at load 2-6 (default 13.8, lvm 8.0, uninstall 7.1; 2026-12-04).
molecule=tests/vm/test_vm_molecule.py
pair=tests/vm/test_vm_molecule_iscsi.py
streams=(
  "$molecule::test_molecule_scenarios_on_one_systemd_vm_over_ssh $molecule::test_ssh_vm_gives_up_when_sshd_never_answers $molecule::test_ssh_vm_retries_a_taken_port_then_fails tests/vm/test_vm_operator.py"
  "tests/vm/test_vm_tier.py tests/vm/test_vm_chaos.py tests/vm/test_vm_iscsi_agent.py tests/vm/test_vm_modules.py"
  "$pair"
)
read -r -a chosen <<<"${BASALT_VM_STREAMS:-$(seq -s ' ' 1 "${#streams[@]}")}"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
for n in "${chosen[@]}"; do
  # shellcheck disable=SC2086 # each stream is a list of test files
  "${pytest[@]}" ${streams[$((n - 1))]} "$@" >"$logs/$n.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  n=${chosen[$i]}
  rc=0
  wait "${pids[$i]}" || rc=$?
  echo "-- VM stream $n: ${streams[$((n - 1))]} (rc $rc)"
  cat "$logs/$n.log"
  ((rc == 0)) || status=1
done
exit "$status"
