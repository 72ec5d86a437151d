#!/bin/busybox sh
# /init of the Basalt test VM's tiny initramfs (busybox only).
# Loads the few modules the stock Debian kernel needs to mount the root disk
# (virtio-pci, virtio-blk, ext4 and their dependencies, listed in order in
# /modules.order by tests/vm/build_image.py), mounts the root disk and hands over to
# the init named in /init.target (the image variant's: /sbin/basalt-init, or systemd).
BB=/bin/busybox
fail() {
    echo "basalt-initramfs: $*" >/dev/console
    $BB sleep 1
    echo o >/proc/sysrq-trigger
    $BB sleep 60
}
$BB mkdir -p /proc /sys /dev /newroot
$BB mount -t proc proc /proc
$BB mount -t sysfs sysfs /sys
$BB mount -t devtmpfs devtmpfs /dev
while read -r mod; do
    $BB insmod "/modules/$mod" || echo "basalt-initramfs: insmod $mod failed" >/dev/console
done </modules.order
# The root disk is the virtio disk with serial "basalt-root" (scratch disks
# may be probed first, so /dev/vda is not necessarily it).
root=
i=0
while [ -z "$root" ]; do
    for d in /sys/block/vd*; do
        [ "$($BB cat "$d/serial" 2>/dev/null)" = basalt-root ] && root=/dev/${d##*/}
    done
    i=$((i + 1))
    [ "$i" -gt 300 ] && fail "no virtio disk with serial basalt-root after 30 s"
    [ -z "$root" ] && $BB sleep 0.1
done
i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ "$i" -gt 100 ] && fail "no device node $root"
    $BB sleep 0.1
done
$BB mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root"
target=$($BB cat /init.target)
[ -x "/newroot$target" ] || fail "no $target on the root disk"
$BB mount --move /dev /newroot/dev
$BB umount /sys
$BB umount /proc
exec $BB switch_root /newroot "$target"
