#!/usr/bin/python
# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mount
short_description: Format, mount, bind-mount and unmount Basalt volumes' block devices
version_added: 0.1.0
description:
  - Mounts a block device on a directory, creating the filesystem first only when the device is blank,
    exactly as the Basalt CSI agent stages a volume; or bind-mounts a directory or device; or unmounts.
  - A device counts as blank only when C(blkid) finds no signature on it and its first and last MiB read as
    zeros (Basalt's pools zero both ends of the volumes they create). Any other device, one holding another
    filesystem, another signature or data no signature explains, is never formatted unless O(force=true).
  - Optionally keeps a matching line in C(/etc/fstab) so the mount survives a reboot.
  - A thin layer over the Basalt storage core (C(staging.ensure_mounted), C(staging.ensure_bind),
    C(staging.ensure_unmounted), C(fstab.ensure_entry)); the CSI agent runs the very same code.
author:
  - Basalt developers (@basalt)
extends_documentation_fragment:
  - basalt.csi.attributes
attributes:
  check_mode:
    support: full
    details:
      - A mount hides the directory beneath it, so for O(state=absent) on a mounted path check mode predicts
        the unmount and the removal; on a path with nothing mounted it predicts a directory that is not empty
        as the failure it is.
  diff_mode:
    support: full
options:
  path:
    description:
      - The mount point (an absolute, normalised path). Created when missing.
    type: path
    required: true
  state:
    description:
      - V(mounted) formats a blank O(device) with O(fstype), grows the filesystem to the device if the device
        grew, and mounts it on O(path) (or bind-mounts O(src) when O(bind=true)).
        A mount point that already has this device mounted is left as it is (its options are not changed), except
        that its filesystem is grown where the kernel allows an online grow.
      - An ext4 filesystem that the process may not grow mounted (no C(CAP_SYS_RESOURCE)) is grown before the
        mount with an undo file (see O(state_dir)); check mode reports that grow as a change without running it.
      - V(unmounted) unmounts everything mounted on O(path) and leaves the directory and C(fstab) alone.
      - V(absent) unmounts, removes the mount point (it must be empty once unmounted) and, with O(fstab=true),
        its C(fstab) line. A mount point that is not empty once unmounted fails the task, which reports
        C(changed) when it had unmounted; the C(fstab) line is then kept.
    type: str
    choices: [mounted, unmounted, absent]
    default: mounted
  device:
    description:
      - The block device to mount, for example C(/dev/loop3). Required for O(state=mounted) unless O(bind=true).
    type: path
  src:
    description:
      - What to bind-mount on O(path) when O(bind=true), a directory or a block device node.
    type: path
  bind:
    description:
      - Bind-mount O(src) instead of mounting a device's filesystem.
    type: bool
    default: false
  fstype:
    description:
      - The filesystem to expect on O(device), and to create when the device is blank.
      - When O(path) already has O(device) mounted with another filesystem, the task fails naming both.
    type: str
    choices: [ext4, xfs]
    default: ext4
  opts:
    description:
      - Mount options, for example V(noatime). Each item may also be a comma-separated list.
    type: list
    elements: str
    default: []
  readonly:
    description:
      - Mount read-only.
    type: bool
    default: false
  force:
    description:
      - Wipe (C(wipefs --all)) and format a device that holds a filesystem other than O(fstype) or other data
        (a partition table, a RAID member, an LVM physical volume, non-zero bytes in its first or last MiB).
      - Without it such a device is refused and the failure names what it holds.
      - A device that already holds O(fstype) is never reformatted.
    type: bool
    default: false
  fstab:
    description:
      - Keep one line for O(path) in O(fstab_file), written atomically. The line names the filesystem by its
        C(UUID=) (by the device path when, in check mode, the device holds no filesystem yet), or for a bind
        mount names the source, with V(bind) in its options. A line for the same mount point with other
        settings is replaced.
      - With O(state=absent) the line is removed. O(state=unmounted) leaves it alone.
    type: bool
    default: false
  fstab_file:
    description:
      - The fstab file to keep the line in.
    type: path
    default: /etc/fstab
  state_dir:
    description:
      - Where an offline ext4 grow keeps its mark and its e2fsprogs undo file (under C(mount/)), named by the
        filesystem's UUID. A task interrupted during the grow leaves them, and the next run rolls the grow back
        with C(e2undo), checks the filesystem and grows it again, exactly as the CSI agent's retried NodeStage
        does. The agent's own state directory is the default.
    type: path
    default: /var/lib/basalt
notes:
  - Runs as root on the host that has the device.
seealso:
  - module: basalt.csi.volume
  - module: ansible.posix.mount
"""

EXAMPLES = r"""
- name: Mount a volume's loop device, formatting it only if it is blank
  basalt.csi.mount:
    device: /dev/loop3
    path: /srv/pgdata
    fstype: xfs
    opts: [noatime]

- name: Reformat a device that holds something else, and persist the mount
  basalt.csi.mount:
    device: /dev/loop4
    path: /srv/scratch
    fstype: ext4
    force: true
    fstab: true

- name: Bind the mounted directory read-only into a second place
  basalt.csi.mount:
    src: /srv/pgdata
    path: /srv/pgdata-ro
    bind: true
    readonly: true

- name: Unmount and remove the mount point
  basalt.csi.mount:
    path: /srv/pgdata
    state: absent
"""

RETURN = r"""
path:
  description: The mount point.
  returned: always
  type: str
  sample: /srv/pgdata
mount:
  description: What is mounted on O(path) after the task (in check mode, what would be).
  returned: always
  type: dict
  contains:
    mounted:
      description: Whether something is mounted on the path.
      type: bool
    source:
      description: The mounted device (for a bind mount, the device that holds the source). Only when mounted.
      type: str
      sample: /dev/loop3
    fstype:
      description: The mounted filesystem's type. Only when mounted.
      type: str
      sample: xfs
    options:
      description: The per-mount options the kernel reports. Only when mounted.
      type: list
      elements: str
      sample: [rw, noatime]
fstab_line:
  description: The O(fstab_file) line for the path after the task, or null when there is none (or O(fstab=false)).
  returned: always
  type: str
  sample: UUID=3b6c2a1e-54f0-4c55-9d6e-0f2d1b8e7a90 /srv/pgdata xfs noatime 0 0
"""

import os
import typing as t

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.basalt.csi.plugins.module_utils import fstab
from ansible_collections.basalt.csi.plugins.module_utils.blkid import probe
from ansible_collections.basalt.csi.plugins.module_utils.devices import is_block_device
from ansible_collections.basalt.csi.plugins.module_utils.errors import StorageError, failure_details
from ansible_collections.basalt.csi.plugins.module_utils.model import DEFAULT_STATE_DIR
from ansible_collections.basalt.csi.plugins.module_utils.mount import find_mount, validate_options
from ansible_collections.basalt.csi.plugins.module_utils.staging import (
    check_absolute,
    ensure_bind,
    ensure_mounted,
    ensure_unmounted,
    grow_mark_under,
)


def mount_facts(path: str) -> t.Dict[str, t.Any]:
    entry = find_mount(path)
    if entry is None:
        return dict(mounted=False)
    return dict(mounted=True, source=entry.source, fstype=entry.fs_type, options=list(entry.options))


def fstab_entry(module: AnsibleModule, path: str, options: t.List[str], check_mode: bool) -> fstab.Entry:
    """The fstab line that describes the wanted mount."""
    if module.params["bind"]:
        return fstab.Entry(module.params["src"], path, "none", ["bind", *options])
    device = module.params["device"]
    uuid = probe(device).uuid
    if uuid is None and not check_mode:
        raise StorageError(f"{device} has no filesystem UUID to name it by in {module.params['fstab_file']}")
    return fstab.Entry(f"UUID={uuid}" if uuid else device, path, module.params["fstype"], options or ["defaults"])


def mounted(module: AnsibleModule, path: str, options: t.List[str]) -> bool:
    params = module.params
    if params["bind"]:
        src = params["src"]
        if not os.path.exists(src):
            module.fail_json(msg=f"mount {path}: bind source {src} does not exist")
        return ensure_bind(src, path, read_only=params["readonly"], options=options, block=is_block_device(src),
                           check_mode=module.check_mode)
    device = params["device"]
    if not device:
        module.fail_json(msg=f"mount {path}: device is required for state=mounted unless bind=true")
    if not is_block_device(device):
        module.fail_json(msg=f"mount {path}: {device} is not a block device")
    mount_options = options + (["ro"] if params["readonly"] else [])
    return ensure_mounted(device, path, params["fstype"], mount_options, force=params["force"],
                          check_mode=module.check_mode, grow_mark=grow_mark_under(params["state_dir"], device))


def run(module: AnsibleModule) -> t.Tuple[bool, t.Dict[str, t.Any], t.Dict[str, t.Any], t.Optional[str]]:
    params = module.params
    path = check_absolute(params["path"], "path")
    options = validate_options(params["opts"])
    state = params["state"]
    before = mount_facts(path)
    if params["fstab"]:
        before["fstab_line"] = fstab.find_line(path, params["fstab_file"])
    if state == "mounted":
        changed = mounted(module, path, options)
    else:
        changed = ensure_unmounted(path, remove=state == "absent", check_mode=module.check_mode)
    line = None
    if params["fstab"]:
        if state == "mounted":
            extra = ["ro"] if params["readonly"] else []
            entry = fstab_entry(module, path, options + extra, module.check_mode)
            fstab_changed, _old, line = fstab.ensure_entry(entry, params["fstab_file"], check_mode=module.check_mode)
        elif state == "absent":
            fstab_changed, _old = fstab.remove_entry(path, params["fstab_file"], check_mode=module.check_mode)
        else:
            fstab_changed, line = False, fstab.find_line(path, params["fstab_file"])
        changed = changed or fstab_changed
    if module.check_mode:
        after = dict(before)
        if changed and state == "mounted":
            after.update(mounted=True, source=params["src"] if params["bind"] else params["device"])
            after.pop("options", None)
        elif state != "mounted":
            after = dict(mounted=False)
    else:
        after = mount_facts(path)
    if params["fstab"]:
        after["fstab_line"] = line
    return changed, before, after, line


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["mounted", "unmounted", "absent"], default="mounted"),
            device=dict(type="path"),
            src=dict(type="path"),
            bind=dict(type="bool", default=False),
            fstype=dict(type="str", choices=["ext4", "xfs"], default="ext4"),
            opts=dict(type="list", elements="str", default=[]),
            readonly=dict(type="bool", default=False),
            force=dict(type="bool", default=False),
            fstab=dict(type="bool", default=False),
            fstab_file=dict(type="path", default=fstab.DEFAULT_FSTAB),
            state_dir=dict(type="path", default=DEFAULT_STATE_DIR),
        ),
        mutually_exclusive=[("device", "src")],
        required_if=[("bind", True, ("src",))],
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        changed, before, after, line = run(module)
        result = dict(changed=changed, path=path, mount={k: v for k, v in after.items() if k != "fstab_line"},
                      fstab_line=line)
        if module._diff:
            result["diff"] = dict(before=before, after=after)
        module.exit_json(**result)
    except (StorageError, OSError) as failure:
        module.fail_json(**failure_details(f"mount {path}", failure))


if __name__ == "__main__":
    main()
