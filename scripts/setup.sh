#!/usr/bin/env bash
# Install everything Basalt needs on a fresh Debian 12 machine (run as root):
# the storage tools the core drives, and the Python package (agent + core).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  util-linux e2fsprogs xfsprogs btrfs-progs   # loop devices, mkfs, fsfreeze
  lvm2 thin-provisioning-tools                # LVM pools
  tgt libiscsi-bin open-iscsi                 # iSCSI target, userspace and kernel initiators
  qemu-system-x86 debootstrap openssh-client  # the real-kernel VM tier (tests/vm; ssh: Molecule's VM)
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".[dev]"
