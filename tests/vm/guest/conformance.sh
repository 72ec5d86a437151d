# Runs conformance tests INSIDE the VM for one pool kind (sourced by
# check_conformance_<kind>.sh and check_chaos_<kind>.sh; the VM tier, tests/vm).
#
#   sh check_conformance_lvm_dm.sh DISK     (kind lvm-dm: the real-kernel subset)
#   sh check_conformance_lvmthin.sh DISK    (kind lvmthin)
#   sh check_chaos_lvm_dm.sh DISK           (test_chaos.py, kind lvm-dm; check_chaos_lvmthin.sh)
#
# Arguments: KIND DISK [REPORT [TEST...]]: REPORT names the JUnit file
# (conformance-KIND by default), TEST the test files (test_realkernel.py).
#
# * The agent's Python packages (grpcio, protobuf, pytest wheels installed on
#   the host by tests/vm/pydeps.py) come from the read-only 9p share with tag
#   "pydeps", mounted at /opt/basalt-pydeps and put first on PYTHONPATH (the
#   guest's Debian python3-grpcio/-protobuf are too old and stay unused).
# * The scratch disk DISK becomes an ext4 /tmp for the run: the agents' roots
#   and the PV images of the private VGs live there (/tmp is a tmpfs in RAM
#   otherwise).
# * pytest runs from the read-only project tree: no cache, no .pyc files; its
#   JUnit report goes to /results/REPORT.xml, its output to the console.
set -u
kind=$1
disk=$2
report=${3:-conformance-$kind}
shift 2
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- tests/conformance/test_realkernel.py
deps=/opt/basalt-pydeps
results=${BASALT_RESULTS:-/results}

mkdir -p "$deps"
if ! mountpoint -q "$deps"; then
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro pydeps "$deps" || {
        echo "  FAILED: no 9p share 'pydeps' (run_vm.run_vm(extra_shares={'pydeps': ...}))"
        exit 2
    }
fi
# The guest's own LVM (udev's 69-lvm.rules: pvscan + vgchange -aay, with the
# global /etc/lvm config that sees every PV) must not auto-activate the
# fixtures' VGs behind the agent's back: no event activation.
mkdir -p /etc/lvm
printf 'global {\n\tevent_activation = 0\n}\n' >/etc/lvm/lvmlocal.conf
lvmconfig global/event_activation
mkfs.ext4 -q -F "$disk" || exit 2
mount "$disk" /tmp || exit 2
chmod 1777 /tmp
cd "${BASALT_TREE:-/basalt}" || exit 2
PYTHONPATH=$deps PYTHONDONTWRITEBYTECODE=1 LVM_SUPPRESS_FD_WARNINGS=1 \
    python3 -m pytest -p no:cacheprovider -v -rs --durations=0 --tb=short \
    --junitxml="$results/$report.xml" \
    --pool-kind "$kind" "$@"
rc=$?
cd /
# The fixtures removed their loop devices, mounts and VGs; /tmp must come off.
umount /tmp 2>/dev/null || { echo "  /tmp still busy:"; losetup -a; grep ' /tmp' /proc/mounts; umount -l /tmp; [ "$rc" -eq 0 ] && rc=1; }
exit "$rc"
