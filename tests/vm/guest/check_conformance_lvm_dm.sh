#!/bin/sh
# The real-kernel conformance subset with --pool-kind lvm-dm (see conformance.sh), and the kill tests of a
# thick CreateVolume's one placed lvcreate (as production runs it: device-mapper activation).
set -- lvm-dm "$1" conformance-lvm-dm tests/conformance/test_realkernel.py tests/conformance/test_crash_lvm_create.py
. "$(dirname "$0")/conformance.sh"
