#!/bin/sh
# The chaos run and the start-up sweep of dm activations with --pool-kind lvm-dm (see conformance.sh).
set -- lvm-dm "$1" chaos-lvm-dm tests/conformance/test_chaos.py tests/conformance/test_dm_startup.py
. "$(dirname "$0")/conformance.sh"
