#!/bin/sh
# Real kernel check: thin pool + thin LV + thin snapshot (dm-thin).  Data
# written to the origin before the snapshot is visible in the snapshot
# (activated with -K: thin snapshots carry the activation-skip flag); data
# written to the origin afterwards is not.
# Usage: check_lvm_thin.sh DISK   (runs inside the VM)
. "$(dirname "$0")/lib.sh"
disk=$1 vg=basalt_thin

cleanup() { vgremove -ff -y "$vg" >/dev/null 2>&1 || true; }
trap cleanup EXIT

step "pvcreate/vgcreate on $disk"
pvcreate -q -y -ff "$disk"
vgcreate -q "$vg" "$disk"
step "thin pool + thin LV (virtual size larger than the pool)"
lvcreate -q -y --type thin-pool -L 256m -n pool "$vg"
lvcreate -q -y -V 2g -T "$vg/pool" -n vol
udevadm settle
wait_for_block "/dev/$vg/vol" || fail "/dev/$vg/vol did not appear"
dmsetup status "$vg-pool-tpool"

step "write to the origin"
write_pattern "/dev/$vg/vol" 0 thin_a
write_pattern "/dev/$vg/vol" 1500 thin_b

step "thin snapshot; activate it with -K"
lvcreate -q -y -s -n snap "$vg/vol"
attr=$(lvs --noheadings -o lv_attr "$vg/snap" | tr -d ' ')
echo "snapshot attr: $attr"
case $attr in V*) ;; *) fail "snapshot is not a thin volume ($attr)" ;; esac
lvchange -ay -K "$vg/snap"
udevadm settle
wait_for_block "/dev/$vg/snap" || fail "/dev/$vg/snap did not appear"

step "origin data visible in the snapshot"
same_as "/dev/$vg/snap" 0 thin_a || fail "snapshot misses origin data at 0"
same_as "/dev/$vg/snap" 1500 thin_b || fail "snapshot misses origin data at 1500M"

step "writes to the origin after the snapshot stay out of it"
write_pattern "/dev/$vg/vol" 0 thin_c
same_as "/dev/$vg/vol" 0 thin_c || fail "origin lost the new data"
same_as "/dev/$vg/snap" 0 thin_a || fail "snapshot changed with its origin"
lvs -o lv_name,lv_attr,lv_size,pool_lv,origin,data_percent "$vg"
echo "lvm_thin: ok"
