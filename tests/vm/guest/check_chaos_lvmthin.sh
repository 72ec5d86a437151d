#!/bin/sh
# The chaos run and the start-up sweep of dm activations with --pool-kind lvmthin (see conformance.sh).
set -- lvmthin "$1" chaos-lvmthin tests/conformance/test_chaos.py tests/conformance/test_dm_startup.py
. "$(dirname "$0")/conformance.sh"
