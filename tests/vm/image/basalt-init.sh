#!/bin/sh
# PID 1 of the Basalt test VM (installed as /sbin/basalt-init by
# tests/vm/build_image.py).  Mounts the pseudo file systems, loads the storage
# modules, starts udevd (and a system D-Bus), mounts the 9p shares, runs the
# command that tests/vm/run_vm.py left in the results share, writes its exit
# status to /results/rc, syncs and powers the VM off.
#
# The host trusts nothing but /results/rc: a missing file is a failure.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C LC_ALL=C TERM=dumb
umask 022

log() { echo "basalt-init: $*"; }

poweroff_now() {
    sync
    [ -d /results ] && umount /results 2>/dev/null
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
    /bin/busybox poweroff -f
}

exec </dev/null >/dev/console 2>&1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /run/lock /run/lvm /run/dbus
hostname basalt-vm
/bin/busybox ip link set lo up 2>/dev/null || log "cannot bring up lo"

# Module order matters: crc32c_generic before dm_thin_pool (its metadata
# checksums), configfs before the LIO modules.
for mod in crc32c_generic configfs dm_mod dm_bufio dm_persistent_data \
    dm_thin_pool dm_snapshot loop sd_mod scsi_transport_iscsi libiscsi \
    libiscsi_tcp iscsi_tcp target_core_mod target_core_iblock \
    target_core_file iscsi_target_mod 9pnet 9pnet_virtio 9p virtio_net; do
    modprobe "$mod" 2>/dev/null || log "modprobe $mod failed"
done
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
# LIO's config directory: set it before any target device exists (rtslib
# would otherwise warn that it cannot change it).
mkdir -p /etc/rtslib-fb-target
[ -w /sys/kernel/config/target/dbroot ] \
    && echo /etc/rtslib-fb-target >/sys/kernel/config/target/dbroot

mkdir -p /basalt /results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro basalt /basalt \
    || log "cannot mount the project share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /results \
    || { log "cannot mount the results share"; poweroff_now; }

/lib/systemd/systemd-udevd --daemon --resolve-names=never 2>/dev/null \
    || log "udevd did not start"
udevadm trigger --type=subsystems --action=add
udevadm trigger --type=devices --action=add
udevadm settle --timeout=60 || log "udevadm settle timed out"

if command -v dbus-daemon >/dev/null; then
    dbus-uuidgen --ensure 2>/dev/null
    dbus-daemon --system --fork 2>/dev/null || log "dbus-daemon did not start"
fi

timeout=600
[ -r /results/request.env ] && . /results/request.env
log "ready after $(cut -d' ' -f1 /proc/uptime) s; running the request (timeout ${timeout} s)"
if [ -r /results/request.sh ]; then
    cd /basalt || cd /
    BASALT_RESULTS=/results BASALT_TREE=/basalt \
        timeout -k 5 "$timeout" sh /results/request.sh
    rc=$?
else
    log "no /results/request.sh"
    rc=125
fi
cd /
log "request finished with rc=$rc after $(cut -d' ' -f1 /proc/uptime) s"
echo "$rc" >/results/rc.tmp && mv /results/rc.tmp /results/rc
poweroff_now
