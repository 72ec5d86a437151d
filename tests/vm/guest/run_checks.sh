#!/bin/sh
# Runs real-kernel checks INSIDE the Basalt test VM (started by
# tests/vm/run_vm.py) and reports one line per check:
#
#   BASALT-CHECK <name> PASS|FAIL rc=<rc> seconds=<s>
#
# on the console and in $BASALT_RESULTS/checks.txt.  Exits 0 only when every
# requested check passed.  Each check gets its own scratch disk(s), found by
# the virtio serial numbers run_vm.py gives them (scratch0, scratch1, ...).
#
# Usage: sh tests/vm/guest/run_checks.sh CHECK...   (CHECK: see check_*.sh/py)
set -u
here=$(cd "$(dirname "$0")" && pwd)
results=${BASALT_RESULTS:-/tmp}
report=$results/checks.txt
: >"$report"
per_check_timeout=${BASALT_CHECK_TIMEOUT:-300}

disk_by_serial() {
    for d in /sys/block/vd*; do
        if [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ]; then
            echo "/dev/${d##*/}"
            return 0
        fi
    done
    return 1
}

disks_needed() {
    case $1 in
        fail) echo 0 ;;
        lvm_linear) echo 2 ;;
        *) echo 1 ;;
    esac
}

next_disk=0
overall=0
for check in "$@"; do
    script=
    for candidate in "$here/check_$check.sh" "$here/check_$check.py"; do
        [ -f "$candidate" ] && script=$candidate && break
    done
    args=
    n=$(disks_needed "$check")
    missing=
    while [ "$n" -gt 0 ]; do
        if dev=$(disk_by_serial "scratch$next_disk"); then
            args="$args $dev"
        else
            missing="scratch$next_disk"
        fi
        next_disk=$((next_disk + 1))
        n=$((n - 1))
    done
    echo "=== check $check: ${script:-no such check}$args"
    start=$(cut -d' ' -f1 /proc/uptime)
    if [ -z "$script" ]; then
        rc=127
    elif [ -n "$missing" ]; then
        echo "no scratch disk $missing (run_vm.py --disks)"
        rc=126
    else
        case $script in
            *.py) interp=python3 ;;
            *) interp=sh ;;
        esac
        # shellcheck disable=SC2086  # word splitting of $args is intended
        timeout -k 5 "$per_check_timeout" $interp "$script" $args 2>&1
        rc=$?
    fi
    end=$(cut -d' ' -f1 /proc/uptime)
    secs=$(awk "BEGIN { printf \"%.1f\", $end - $start }")
    if [ "$rc" -eq 0 ]; then verdict=PASS; else verdict=FAIL; overall=1; fi
    line="BASALT-CHECK $check $verdict rc=$rc seconds=$secs"
    echo "$line"
    echo "$line" >>"$report"
    sync
done
exit "$overall"
