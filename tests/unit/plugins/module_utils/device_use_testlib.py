"""A recorded-style /sys and /proc/self/mountinfo for basalt_core.device_use (test_device_use, test_doctor_in_use).

The multipath part is the VM tier's real recording (multipath_recorded/sysfs.json: a map dm-1 "mpatha"
over sda and sdb), moved under ``class/block`` where device_use reads it.  The rest follows the kernel's
layout (Documentation/ABI/stable/sysfs-block; the iSCSI transport's ``class/iscsi_session/sessionN/device``
-> ``targetH:C:T/H:C:T:L/block/sdX``): this machine has no kernel iSCSI initiator to record one from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Union

from multipath_testlib import build_tree, sysfs_tree

from basalt_core import device_use

#: /proc/self/mountinfo lines in the kernel's format: a partition of sdq, the multipath map (by number;
#: its source as udev names it), a btrfs on sdr (anonymous device number: found by its source)
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw,errors=remount-ro
101 27 65:1 / /mnt/data rw,relatime shared:60 - ext4 /dev/sdq1 rw
102 27 253:1 / /srv/mp rw,relatime shared:61 - xfs /dev/mapper/mpatha rw,attr2,inode64,noquota
103 27 0:55 / /srv/btr rw,relatime shared:62 - btrfs /dev/sdr rw,space_cache=v2,subvolid=5,subvol=/
"""
SWAPS = """\
Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/sds                                partition\t1048572\t\t0\t\t-2
"""


def disk(name: str, number: str, holders: Sequence[str] = ()) -> Dict[str, Union[str, List[str]]]:
    return {f"class/block/{name}/dev": number + "\n", f"class/block/{name}/holders": list(holders)}


def tree() -> Dict[str, Union[str, List[str]]]:
    recorded = {f"class/{key}": value for key, value in sysfs_tree().items()}  # block/dm-1/... -> class/block/...
    entries: Dict[str, Union[str, List[str]]] = {
        **recorded, "class/block/dm-1/dev": "253:1\n",
        **disk("sdq", "65:0"), **disk("sdq1", "65:1"), **disk("sdq2", "65:2"),
        "class/block/sdq/sdq1/partition": "1\n", "class/block/sdq/sdq2/partition": "2\n",
        **disk("sdr", "65:16"), **disk("sds", "65:32"), **disk("sdt", "65:48"),
        **disk("sdu", "65:64", ["dm-5"]), **disk("dm-5", "253:5"), "class/block/dm-5/dm/name": "vg0-data\n",
    }
    # session 7: one LUN, the disk with the mounted partition; 8: two LUNs, the multipath paths; 9: idle
    for sid, host, luns in ((7, 3, ["sdq"]), (8, 4, ["sda", "sdb"]), (9, 5, ["sdt"])):
        for lun, name in enumerate(luns):
            entries[f"class/iscsi_session/session{sid}/device/target{host}:0:0/{host}:0:0:{lun}/block"] = [name]
    return entries


def kernel(root: Path) -> device_use.Kernel:
    """The recorded tree under *root*: sysfs, an empty /dev (no device to probe), mountinfo and swaps."""
    build_tree(root / "sys", tree())
    (root / "dev").mkdir()
    (root / "mountinfo").write_text(MOUNTINFO)
    (root / "swaps").write_text(SWAPS)
    return device_use.Kernel(str(root / "sys"), str(root / "dev"), str(root / "mountinfo"), str(root / "swaps"))
