#!/bin/sh
# Real kernel check: classic copy-on-write snapshot (dm-snapshot) of a linear
# LV.  The snapshot keeps the data of the moment it was taken while the origin
# changes; merging is not exercised.
# Usage: check_lvm_cow.sh DISK   (runs inside the VM)
. "$(dirname "$0")/lib.sh"
disk=$1 vg=basalt_cow

cleanup() { vgremove -ff -y "$vg" >/dev/null 2>&1 || true; }
trap cleanup EXIT

step "pvcreate/vgcreate on $disk"
pvcreate -q -y -ff "$disk"
vgcreate -q "$vg" "$disk"
step "linear LV with data"
lvcreate -q -y -n vol -L 128m "$vg"
udevadm settle
wait_for_block "/dev/$vg/vol" || fail "/dev/$vg/vol did not appear"
write_pattern "/dev/$vg/vol" 3 cow_a

step "classic snapshot with a 32 MiB COW area"
lvcreate -q -y -s -n snap -L 32m "$vg/vol"
udevadm settle
wait_for_block "/dev/$vg/snap" || fail "/dev/$vg/snap did not appear"
attr=$(lvs --noheadings -o lv_attr "$vg/snap" | tr -d ' ')
echo "snapshot attr: $attr"
case $attr in s*) ;; *) fail "not a classic snapshot ($attr)" ;; esac
dmsetup table "$vg-snap"

step "snapshot sees the data; origin overwrite is copied out first"
same_as "/dev/$vg/snap" 3 cow_a || fail "snapshot misses the origin data"
write_pattern "/dev/$vg/vol" 3 cow_b
same_as "/dev/$vg/vol" 3 cow_b || fail "origin lost the new data"
same_as "/dev/$vg/snap" 3 cow_a || fail "snapshot changed with its origin"
pct=$(lvs --noheadings -o snap_percent "$vg/snap" | tr -d ' ')
echo "COW area used: $pct%"
[ "$pct" != "0.00" ] || fail "COW area unused after an origin write"
echo "lvm_cow: ok"
