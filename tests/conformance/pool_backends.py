"""The pools the conformance agents serve (``--pool-kind``) and, for the LVM kinds, the private VG
each agent gets: ``LvmVg`` (lvm-loop), ``DmLvmVg`` (lvm-dm) and ``ThinLvmVg`` (lvmthin)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest
from csi_requests import GiB
from host_state import pattern, read_block, write_block

try:  # only isolated_config(), so that the tests' LVM sees exactly what the agent's does
    from basalt_core.lvm import isolated_config
except ImportError:  # pragma: no cover - depends on the environment
    isolated_config = None  # type: ignore[assignment]

FILE_KIND = "file"
LVM_LOOP_KIND = "lvm-loop"
# Real-kernel kinds (device-mapper needed: they run inside the VM tier, tests/vm):
LVM_DM_KIND = "lvm-dm"  # --pool lvm:VG --lvm-activation dm
LVMTHIN_KIND = "lvmthin"  # --pool lvmthin:VG/POOL (thin pool made by the fixture)
REAL_KERNEL_KINDS = (LVM_DM_KIND, LVMTHIN_KIND)
POOL_KINDS = (FILE_KIND, LVM_LOOP_KIND, *REAL_KERNEL_KINDS)
LVM_KINDS = (LVM_LOOP_KIND, *REAL_KERNEL_KINDS)
THIN_POOL_NAME = "thinpool"
THIN_POOL_SIZE = "1g"
LVM_PV_IMAGE_SIZE = 4 * GiB  # sparse: only written extents take space
LVM_METADATA_SIZE = "16m"
MANAGED_TAG = "basalt.managed"
READY_TAG = "basalt.state=ready"
LV_VOLUME_PREFIX = "csi-"  # Basalt's LV for volume "vol-<hex>" is "csi-<hex>"


# --------------------------------------------------------------------------
# the lvm-loop pool: a private VG on a loop device over a sparse image
# --------------------------------------------------------------------------


class LvmVg:
    """A VG made for one agent: one PV (loop device over ``ROOT/lvm-pv.img``).

    LVM runs with ``LVM_SYSTEM_DIR=ROOT/lvm`` whose lvm.conf is
    ``basalt_core.lvm.isolated_config([pv])``: it sees only this PV, never
    activates, writes no backups.  ``create`` also makes LVs that Basalt did
    not (``FOREIGN_LVS``: a plain one, and one named like Basalt's own LVs
    but untagged) and writes a marker into each; ``foreign_problems`` tells
    whether they and their data survived.
    """

    FOREIGN_LVS = ("not-basalt", LV_VOLUME_PREFIX + "f0e1d2c3b4a5968778695a4b3c2d1e0f")
    kind = LVM_LOOP_KIND

    def agent_args(self) -> list[str]:
        """The agent's LVM arguments for this kind."""
        return ["--lvm-activation", "loop", "--lvm-alloc", "contiguous"]

    def pool_spec(self) -> str:
        return f"lvm:{self.vg}"

    def lvm_conf(self) -> str:
        """The private lvm.conf: only this PV visible (lvm-loop: never activates)."""
        assert self.device and isolated_config is not None
        return isolated_config([self.device])

    def __init__(self, root: str) -> None:
        self.root = root
        self.image = os.path.join(root, "lvm-pv.img")
        self.system_dir = os.path.join(root, "lvm")
        self.vg = f"basalt-ct-{uuid.uuid4().hex[:12]}"
        self.device: str | None = None
        self.vg_created = False
        self.foreign: dict[str, bytes] = {}
        self._geometry: tuple[int, int] | None = None  # (pe_start, extent size): fixed at vgcreate

    # -- running LVM -------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {"LVM_SYSTEM_DIR": self.system_dir, "LVM_SUPPRESS_FD_WARNINGS": "1"}

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [tool, *args], capture_output=True, text=True, timeout=120,
            env={**os.environ, **self.env()}, stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)}: rc {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def report(self, tool: str, section: str, columns: str, *operands: str) -> list[dict[str, str]]:
        out = self.run(
            tool, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", columns, *operands
        ).stdout
        rows: list[dict[str, str]] = []
        for part in json.loads(out).get("report", []):
            rows += part.get(section, [])
        return rows

    # -- set-up and tear-down ------------------------------------------------

    def create(self, size: int = LVM_PV_IMAGE_SIZE) -> LvmVg:
        if isolated_config is None:
            pytest.skip("--pool-kind lvm-loop needs basalt_core (pip install -e .)")
        with open(self.image, "wb") as fh:
            fh.truncate(size)
        self.device = subprocess.run(
            ["losetup", "--find", "--show", self.image], check=True, capture_output=True, text=True
        ).stdout.strip()
        os.makedirs(self.system_dir)
        with open(os.path.join(self.system_dir, "lvm.conf"), "w", encoding="utf-8") as fh:
            fh.write(self.lvm_conf() + "\n")
        self.run("pvcreate", "--metadatasize", LVM_METADATA_SIZE, self.device)
        self.run("vgcreate", self.vg, self.device)
        self.vg_created = True
        self.after_vgcreate()
        for name in self.FOREIGN_LVS:
            self.run("lvcreate", "-an", "-Zn", "-y", "--alloc", "contiguous", "-n", name,
                     "-L", "4m", "--addtag", "owner.someone-else", self.vg)
            marker = pattern(64 * 1024, f"foreign:{self.vg}:{name}")
            self.write_lv(name, marker)
            self.foreign[name] = marker
        return self

    def after_vgcreate(self) -> None:
        """Kind-specific set-up of the new VG (the thin pool of lvmthin)."""

    def foreign_problems(self) -> list[str]:
        """What happened to the LVs made without Basalt (empty when they are intact)."""
        if not self.vg_created:
            return []
        problems = []
        lvs = self.lvs()
        for name, marker in self.foreign.items():
            if name not in lvs:
                problems.append(f"foreign LV {self.vg}/{name} was removed")
            elif MANAGED_TAG in lvs[name]["lv_tags"].split(","):
                problems.append(f"foreign LV {self.vg}/{name} was tagged {MANAGED_TAG}")
            elif self.read_lv(name, len(marker)) != marker:
                problems.append(f"foreign LV {self.vg}/{name}: its data changed")
        return problems

    def release(self) -> None:
        """vgremove + pvremove (the LV mappings must be detached already)."""
        if self.device is None:
            return
        if self.vg_created:
            self.run("vgremove", "-ff", "-y", self.vg)
            self.vg_created = False
        self.run("pvremove", "-ff", "-y", self.device, check=False)

    # -- what LVM says ---------------------------------------------------------

    def lvs(self) -> dict[str, dict[str, str]]:
        """Every LV of the VG (Basalt's or not) by name."""
        rows = self.report("lvs", "lv", "lv_name,lv_tags,lv_size,seg_pe_ranges", self.vg)
        return {row["lv_name"]: row for row in rows}

    def _geometry_now(self) -> tuple[int, int]:
        if self._geometry is None:
            assert self.device
            pe_start = int(self.report("pvs", "pv", "pv_name,pe_start", self.device)[0]["pe_start"])
            extent = int(self.report("vgs", "vg", "vg_extent_size", self.vg)[0]["vg_extent_size"])
            self._geometry = (pe_start, extent)
        return self._geometry

    def pe_start(self) -> int:
        """Where the PV's first extent starts (``pvs -o pe_start``)."""
        return self._geometry_now()[0]

    def extent_size(self) -> int:
        return self._geometry_now()[1]

    def vg_free(self) -> int:
        return int(self.report("vgs", "vg", "vg_free", self.vg)[0]["vg_free"])

    def lv_location(self, name: str) -> tuple[int, int]:
        """(offset, length) of a one-segment LV on the PV device: pe_start + first_pe * extent_size."""
        row = self.lvs()[name]
        ranges = row["seg_pe_ranges"].split()
        assert len(ranges) == 1, f"{name} is not one contiguous segment: {ranges}"
        dev, _, span = ranges[0].rpartition(":")
        assert dev == self.device, f"{name} lies on {dev}, not on {self.device}"
        first, _, last = span.partition("-")
        extent = self.extent_size()
        return self.pe_start() + int(first) * extent, (int(last) - int(first) + 1) * extent

    def read_lv(self, name: str, size: int, offset: int = 0) -> bytes:
        """Bytes of LV *name*, read from the PV device at the LV's offset (no LV device needed)."""
        assert self.device
        start, length = self.lv_location(name)
        assert offset + size <= length
        return read_block(self.device, size, start + offset)

    def write_lv(self, name: str, data: bytes, offset: int = 0) -> None:
        assert self.device
        start, length = self.lv_location(name)
        assert offset + len(data) <= length
        write_block(self.device, data, start + offset)


def device_mapper_problem() -> str | None:
    """Why this host cannot run the real-kernel kinds (None when device-mapper works)."""
    if not os.path.exists("/dev/mapper/control"):
        return "no /dev/mapper/control"
    if shutil.which("dmsetup") is None:
        return "no dmsetup in PATH (Debian: dmsetup)"
    proc = subprocess.run(["dmsetup", "version"], capture_output=True, text=True)
    if proc.returncode != 0 or "Driver version" not in proc.stdout:
        lines = [ln.strip() for ln in proc.stderr.splitlines()
                 if "failed" in ln.lower() and ln.strip() != "Command failed."]
        return "dmsetup version: " + (lines[0] if lines else "no kernel driver version")
    return None


class DmLvmVg(LvmVg):
    """``lvm-dm``: the same private VG, but LVM may activate (real device-mapper).

    The agent runs ``--pool lvm:VG --lvm-activation dm``; each volume is an LV
    that ``lvchange -ay`` maps to ``/dev/VG/LV``.  The private lvm.conf still
    admits only this VG's PV (so the dm devices of its LVs are never scanned),
    with activation on and no dmeventd monitoring.
    """

    kind = LVM_DM_KIND

    def agent_args(self) -> list[str]:
        return ["--lvm-activation", "dm"]

    def lvm_conf(self) -> str:
        return (
            super().lvm_conf().replace("global { activation = 0 }", "global { activation = 1 }")
            + " activation { monitoring = 0 udev_sync = 1 udev_rules = 1 }"
        )

    def dm_devices(self) -> list[str]:
        """Device-mapper devices of this VG (``dmsetup ls`` names)."""
        out = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout
        prefix = self.vg.replace("-", "--") + "-"
        return sorted(line.split()[0] for line in out.splitlines() if line.startswith(prefix))

    def release(self) -> None:
        """Deactivate the VG (dm devices gone) before vgremove/pvremove."""
        if self.device is not None and self.vg_created:
            self.run("vgchange", "-an", self.vg, check=False)
        super().release()


class ThinLvmVg(DmLvmVg):
    """``lvmthin``: a thin pool ``VG/thinpool`` (``lvcreate --type thin-pool``)
    in the private VG; the agent runs ``--pool lvmthin:VG/thinpool``."""

    kind = LVMTHIN_KIND

    def agent_args(self) -> list[str]:
        return []

    def pool_spec(self) -> str:
        return f"lvmthin:{self.vg}/{THIN_POOL_NAME}"

    def after_vgcreate(self) -> None:
        self.run("lvcreate", "-y", "--type", "thin-pool", "-L", THIN_POOL_SIZE, "-n", THIN_POOL_NAME, self.vg)


LVM_VG_CLASSES: dict[str, type[LvmVg]] = {LVM_LOOP_KIND: LvmVg, LVM_DM_KIND: DmLvmVg, LVMTHIN_KIND: ThinLvmVg}


def volume_lv_name(volume_id: str) -> str:
    """The LV Basalt's lvm pool keeps volume *volume_id* in (``vol-<hex>`` -> ``csi-<hex>``)."""
    assert volume_id.startswith("vol-"), volume_id
    return LV_VOLUME_PREFIX + volume_id[len("vol-"):]
