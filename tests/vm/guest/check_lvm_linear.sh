#!/bin/sh
# Real kernel check: LVM on two scratch disks; a linear LV spanning both PVs
# is activated through device-mapper, /dev/VG/LV appears (udev), an ext4 file
# system on it is written and read back, also after deactivate/reactivate.
# Usage: check_lvm_linear.sh DISK1 DISK2   (runs inside the VM)
. "$(dirname "$0")/lib.sh"
d1=$1 d2=$2 vg=basalt_lin
mnt=/mnt/lvm_linear

cleanup() {
    mountpoint -q "$mnt" && umount "$mnt"
    vgremove -ff -y "$vg" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "pvcreate/vgcreate on $d1 $d2"
pvcreate -q -y -ff "$d1" "$d2"
vgcreate -q "$vg" "$d1" "$d2"
step "lvcreate a linear LV spanning both PVs (extents on both)"
lvcreate -q -y -n data -L 1100m "$vg"
udevadm settle
wait_for_block "/dev/$vg/data" || fail "/dev/$vg/data did not appear"
ls -l "/dev/$vg/data" "/dev/mapper/$vg-data"
segs=$(lvs --noheadings -o seg_count "$vg/data" | tr -d ' ')
[ "$segs" -eq 2 ] || fail "expected 2 segments (one per PV), got $segs"
dmsetup table "$vg-data"

step "mkfs.ext4 + mount + write + read"
mkfs.ext4 -q -F "/dev/$vg/data"
mkdir -p "$mnt"
mount "/dev/$vg/data" "$mnt"
head -c 4194304 /dev/urandom >/tmp/lin.bin
cp /tmp/lin.bin "$mnt/file"
echo "written" >"$mnt/last"
sync
umount "$mnt"

step "deactivate: the device node goes away"
lvchange -an "$vg/data"
udevadm settle
[ ! -e "/dev/$vg/data" ] || fail "/dev/$vg/data still present after lvchange -an"

step "reactivate and read back"
lvchange -ay "$vg/data"
udevadm settle
wait_for_block "/dev/$vg/data" || fail "/dev/$vg/data did not come back"
mount -o ro "/dev/$vg/data" "$mnt"
cmp "$mnt/file" /tmp/lin.bin || fail "file content differs after remount"
[ "$(cat "$mnt/last")" = written ] || fail "last file lost"
umount "$mnt"
echo "lvm_linear: ok"
