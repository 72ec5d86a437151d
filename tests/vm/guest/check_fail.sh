#!/bin/sh
# A check that always fails: used only by the self-test in
# tests/vm/test_vm_tier.py to prove that a failure inside the VM reaches the
# host as a non-zero exit status.
echo "check_fail: failing on purpose"
exit 3
