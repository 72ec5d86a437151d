#!/bin/sh
# The real-kernel conformance subset with --pool-kind lvmthin (see conformance.sh), and the kill tests of
# DeleteVolume answered at lvremove's line.
set -- lvmthin "$1" conformance-lvmthin tests/conformance/test_realkernel.py tests/conformance/test_crash_lvm_create.py
. "$(dirname "$0")/conformance.sh"
