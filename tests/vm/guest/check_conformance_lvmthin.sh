#!/bin/sh
# The real-kernel conformance subset with --pool-kind lvmthin (see conformance.sh).
set -- lvmthin "$1"
. "$(dirname "$0")/conformance.sh"
