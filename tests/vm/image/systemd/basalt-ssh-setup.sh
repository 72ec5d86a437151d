#!/bin/sh
# basalt-ssh-setup (systemd variant of the Basalt test VM; runs before sshd):
# makes this VM's own SSH host key, installs the run's public key for root
# from the results share (tests/vm/ssh_vm.py writes it there before boot)
# and hands the host key's public half back through the same share, so the
# host can check the key it connects to instead of trusting the first one.
set -eu
share=/run/basalt-results
modprobe 9pnet_virtio
modprobe 9p
mkdir -p "$share"
mount -t 9p -o trans=virtio,version=9p2000.L results "$share"
trap 'umount "$share"' EXIT
# ed25519 only: RSA key generation costs seconds under TCG.
[ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
install -d -m 0700 /root/.ssh
install -m 0600 "$share/authorized_keys" /root/.ssh/authorized_keys
cp /etc/ssh/ssh_host_ed25519_key.pub "$share/ssh_host_ed25519_key.pub.tmp"
mv "$share/ssh_host_ed25519_key.pub.tmp" "$share/ssh_host_ed25519_key.pub"
