#!/bin/sh
# The real-kernel conformance subset with --pool-kind lvm-dm (see conformance.sh).
set -- lvm-dm "$1"
. "$(dirname "$0")/conformance.sh"
