"""Shared helpers for the Basalt CSI conformance suite.

Everything here talks to a real ``python3 -m basalt_agent`` process over its
unix socket and inspects the real system state (``/proc/self/mountinfo``,
``losetup``, LVM reports) to check what the agent did.

Two pool kinds (``--pool-kind``):

* ``file``: ``--pool file:DIR``, each volume a sparse image file under DIR,
  attached as a loop device backed by that file;
* ``lvm-loop``: ``--pool lvm:VG --lvm-activation loop --lvm-alloc contiguous``
  on a private VG (``LvmVg``) whose one PV is a loop device over a sparse
  image under the agent's root; each volume is a linear LV, "activated" as a
  loop device over the PV device at the LV's byte offset.  LVM runs with a
  private ``LVM_SYSTEM_DIR`` whose lvm.conf admits only that PV and never
  activates anything.

Tests stay kind-neutral through ``Agent.pool_loops``/``Agent.loops_for`` (which
loop devices belong to the pool, and what backs each) and
``Agent.pool_objects`` (image files, or LV names).
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_SRC = REPO_ROOT / "agent"

try:  # the package is normally installed (pip install -e); fall back to the tree.
    from basalt_agent.launcher import AgentFailed, AgentProcess
    from basalt_agent.proto import csi_pb2 as csi
    from basalt_agent.proto import csi_pb2_grpc as csi_grpc
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(AGENT_SRC))
    from basalt_agent.launcher import AgentFailed, AgentProcess
    from basalt_agent.proto import csi_pb2 as csi
    from basalt_agent.proto import csi_pb2_grpc as csi_grpc

try:  # only isolated_config(), so that the tests' LVM sees exactly what the agent's does
    from basalt_core.lvm import isolated_config
except ImportError:  # pragma: no cover - depends on the environment
    isolated_config = None  # type: ignore[assignment]

__all__ = ["csi", "csi_grpc"]

SC = grpc.StatusCode
DRIVER_NAME = "csi.basalt.dev"
TOPOLOGY_KEY = "topology.basalt.dev/node"
COPY_METHOD_KEY = "basalt.dev/copy-method"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
MiB = 1024 * 1024
GiB = 1024 * MiB
XFS_MIN = 300 * MiB
SECRET_SENTINEL = "s3cr3t-SENTINEL"
SECRETS = {"password": SECRET_SENTINEL}
RPC_TIMEOUT = 60.0
# Only bounds a failure: under QEMU TCG (the VM tier) on a loaded 2-core host, the agent's
# imports alone took more than 20 s (seen 2026-11-25, load 7-16).
START_TIMEOUT = 90.0

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

AM = csi.VolumeCapability.AccessMode
SINGLE_NODE_MODES = [
    AM.SINGLE_NODE_WRITER,
    AM.SINGLE_NODE_READER_ONLY,
    AM.SINGLE_NODE_SINGLE_WRITER,
    AM.SINGLE_NODE_MULTI_WRITER,
]
MULTI_NODE_MODES = [
    AM.MULTI_NODE_READER_ONLY,
    AM.MULTI_NODE_SINGLE_WRITER,
    AM.MULTI_NODE_MULTI_WRITER,
]


# --------------------------------------------------------------------------
# request builders
# --------------------------------------------------------------------------


def mount_cap(
    fs_type: str = "ext4",
    mode: "csi.VolumeCapability.AccessMode.Mode" = AM.SINGLE_NODE_WRITER,
    flags: Iterable[str] = (),
) -> Any:
    """A MOUNT VolumeCapability."""
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=csi.VolumeCapability.AccessMode(mode=mode),
    )


def block_cap(mode: "csi.VolumeCapability.AccessMode.Mode" = AM.SINGLE_NODE_WRITER) -> Any:
    """A BLOCK VolumeCapability."""
    return csi.VolumeCapability(
        block=csi.VolumeCapability.BlockVolume(),
        access_mode=csi.VolumeCapability.AccessMode(mode=mode),
    )


def crange(required: int = 0, limit: int = 0) -> Any:
    return csi.CapacityRange(required_bytes=required, limit_bytes=limit)


def exact(size: int) -> Any:
    return crange(size, size)


def round_up(size: int, unit: int) -> int:
    return -(-size // unit) * unit


def unique(prefix: str = "vol") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def snapshot_source(snapshot_id: str) -> Any:
    return csi.VolumeContentSource(
        snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)
    )


def volume_source(volume_id: str) -> Any:
    return csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=volume_id))


def topology(node: str) -> Any:
    return csi.Topology(segments={TOPOLOGY_KEY: node})


# --------------------------------------------------------------------------
# gRPC helpers
# --------------------------------------------------------------------------


class TimedStub:
    """Wraps a generated stub so that every call carries a deadline."""

    def __init__(self, stub: Any, timeout: float = RPC_TIMEOUT) -> None:
        self._stub = stub
        self._timeout = timeout

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self._timeout)
            return method(request, **kwargs)

        call.__name__ = name
        return call


def expect_code(method: Callable[..., Any], request: Any, *codes: grpc.StatusCode) -> grpc.RpcError:
    """Call ``method(request)`` and assert that it fails with one of ``codes``."""
    assert codes, "expect_code needs at least one code"
    try:
        response = method(request)
    except grpc.RpcError as err:
        code = err.code()
        assert code in codes, (
            f"{getattr(method, '__name__', method)}: expected {[c.name for c in codes]}, "
            f"got {code.name}: {err.details()!r}"
        )
        return err
    pytest.fail(
        f"{getattr(method, '__name__', method)}: expected {[c.name for c in codes]}, "
        f"got OK: {response}"
    )


def code_of(method: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, Any]:
    """Return (code, response-or-error) without asserting."""
    try:
        return SC.OK, method(request)
    except grpc.RpcError as err:
        return err.code(), err


# --------------------------------------------------------------------------
# system state: mounts and loop devices
# --------------------------------------------------------------------------


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    root: str
    fstype: str
    source: str
    options: frozenset[str]
    super_options: frozenset[str]


def mounts() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            left, _, right = line.rstrip("\n").partition(" - ")
            lf, rf = left.split(" "), right.split(" ")
            entries.append(
                MountEntry(
                    mount_point=_unescape(lf[4]),
                    root=_unescape(lf[3]),
                    fstype=rf[0],
                    source=_unescape(rf[1]) if len(rf) > 1 else "",
                    options=frozenset(lf[5].split(",")),
                    super_options=frozenset(rf[2].split(",")) if len(rf) > 2 else frozenset(),
                )
            )
    return entries


def mounts_at(path: str | os.PathLike[str]) -> list[MountEntry]:
    p = os.path.abspath(os.fspath(path))
    return [m for m in mounts() if m.mount_point == p]


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return bool(mounts_at(path))


def top_mount(path: str | os.PathLike[str]) -> MountEntry:
    found = mounts_at(path)
    assert found, f"{path} is not a mount point"
    return found[-1]


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def mounts_under(root: str | os.PathLike[str]) -> list[MountEntry]:
    r = os.path.abspath(os.fspath(root))
    return [m for m in mounts() if _under(m.mount_point, r)]


def loop_devices() -> dict[str, str]:
    """Map loop device -> backing file (without a trailing ' (deleted)')."""
    out = subprocess.run(
        ["losetup", "--list", "--json"], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, str] = {}
    if not out.strip():
        return result
    for dev in json.loads(out).get("loopdevices", []):
        back = dev.get("back-file") or ""
        if back.endswith(" (deleted)"):
            back = back[: -len(" (deleted)")]
        result[dev["name"]] = back
    return result


@dataclass(frozen=True)
class Loop:
    device: str
    back_file: str
    offset: int
    size_limit: int
    autoclear: bool = False


def loop_table() -> list[Loop]:
    """Every loop device with its backing file, offset and size limit."""
    out = subprocess.run(
        ["losetup", "--list", "--json"], check=True, capture_output=True, text=True
    ).stdout
    if not out.strip():
        return []
    loops = []
    for dev in json.loads(out).get("loopdevices", []):
        back = dev.get("back-file") or ""
        if back.endswith(" (deleted)"):
            back = back[: -len(" (deleted)")]
        loops.append(
            Loop(dev["name"], back, int(dev.get("offset") or 0), int(dev.get("sizelimit") or 0),
                 dev.get("autoclear") in (True, 1, "1", "true"))
        )
    return loops


def loops_under(root: str | os.PathLike[str]) -> dict[str, str]:
    r = os.path.abspath(os.fspath(root))
    return {dev: back for dev, back in loop_devices().items() if _under(back, r)}


def loops_for_file(path: str | os.PathLike[str]) -> str:
    """Output of ``losetup -j FILE`` (empty when nothing backs it)."""
    return subprocess.run(
        ["losetup", "-j", os.fspath(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


def files_under(root: str | os.PathLike[str]) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(os.fspath(root)):
        for name in filenames + dirnames:
            found.add(os.path.join(dirpath, name))
    return found


def _umount(path: str) -> None:
    if subprocess.run(["umount", path], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", path], capture_output=True)


def cleanup_root(
    root: str,
    own_mounts: Iterable[str] = (),
    own_loops: Iterable[str] = (),
    backing_devices: Iterable[str] = (),
    release: Callable[[], None] | None = None,
) -> None:
    """Remove everything a fixture created under ``root``, and only that.

    Agent-made mounts go first (deepest first), then the agent's loop devices:
    those whose backing file lives under ``root`` (the file pool's images) or
    is one of ``backing_devices`` (the lvm pool's PV: its LV mappings).  Then
    ``release`` (vgremove/pvremove of the fixture's VG), then the fixture's own
    mounts and loop devices, then the directory itself.
    """
    keep = {os.path.abspath(m) for m in own_mounts}
    own = set(own_loops)
    backings = set(backing_devices)

    def agent_loops() -> list[str]:
        return [
            lo.device for lo in loop_table()
            if lo.device not in own and (_under(lo.back_file, root) or lo.back_file in backings)
        ]

    for _ in range(3):
        pending = [m for m in mounts_under(root) if m.mount_point not in keep]
        if not pending:
            break
        for m in sorted(pending, key=lambda e: e.mount_point.count("/"), reverse=True):
            _umount(m.mount_point)
    for dev in agent_loops():
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    if release is not None:
        try:
            release()
        except Exception as err:  # keep cleaning up; report it
            print(f"conformance cleanup: {err}", file=sys.stderr)
    for mp in sorted(keep, key=lambda p: p.count("/"), reverse=True):
        while is_mounted(mp):
            before = len(mounts_at(mp))
            _umount(mp)
            if len(mounts_at(mp)) >= before:
                break
    for dev in [*agent_loops(), *own, *loops_under(root)]:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    if mounts_under(root):
        # Never rmtree through a live mount.
        print(f"conformance cleanup: mounts left under {root}; not removing it", file=sys.stderr)
        return
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------
# data helpers
# --------------------------------------------------------------------------


def pattern(size: int, seed: str) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def write_file(path: str | os.PathLike[str], data: bytes) -> None:
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: str | os.PathLike[str]) -> bytes:
    with open(os.fspath(path), "rb") as fh:
        return fh.read()


def write_block(dev: str | os.PathLike[str], data: bytes, offset: int = 0) -> None:
    fd = os.open(os.fspath(dev), os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_block(dev: str | os.PathLike[str], size: int, offset: int = 0) -> bytes:
    fd = os.open(os.fspath(dev), os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def fs_total_bytes(path: str | os.PathLike[str]) -> int:
    st = os.statvfs(os.fspath(path))
    return st.f_blocks * st.f_frsize


def assert_erofs(path: str | os.PathLike[str]) -> None:
    try:
        write_file(os.path.join(os.fspath(path), "must-fail"), b"x")
    except OSError as err:
        assert err.errno == errno.EROFS, f"write failed with {err!r}, expected EROFS"
        return
    pytest.fail(f"write to read-only publication {path} succeeded")


def is_block_device(path: str | os.PathLike[str]) -> bool:
    return stat.S_ISBLK(os.stat(os.fspath(path)).st_mode)


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


# --------------------------------------------------------------------------
# the agent process
# --------------------------------------------------------------------------


_SHIM_DIR: list[str] = []


def _import_shim() -> list[str]:
    """A PYTHONPATH entry that makes the working tree's agent importable.

    The installed layout maps ``agent/basalt_agent`` to ``basalt_agent`` and
    ``plugins/module_utils`` to ``basalt_core``; mirror it with symlinks in a
    private temporary directory so that the agent under test is always this
    working tree's code, installed or not.
    """
    if not _SHIM_DIR:
        shim = tempfile.mkdtemp(prefix="basalt-conformance-pypath-", dir="/tmp")
        os.symlink(AGENT_SRC / "basalt_agent", os.path.join(shim, "basalt_agent"))
        os.symlink(REPO_ROOT / "plugins" / "module_utils", os.path.join(shim, "basalt_core"))
        atexit.register(shutil.rmtree, shim, True)
        _SHIM_DIR.append(shim)
    return [_SHIM_DIR[0]]


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    parts = _import_shim()
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def make_root(tag: str) -> str:
    return tempfile.mkdtemp(prefix=f"basalt-conformance-{tag}-", dir="/tmp")


class LaunchedAgent(AgentProcess):
    """The agent's process, run under *launcher* (a command that ends by exec'ing the agent) when one is given."""

    def __init__(self, launcher: list[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.launcher = launcher

    @property
    def argv(self) -> list[str]:
        return [*self.launcher, *super().argv]


class Agent:
    """A running ``python3 -m basalt_agent`` and gRPC stubs talking to it."""

    def __init__(
        self,
        root: str,
        pool: str,
        node_id: str | None = None,
        services: str | None = None,
        capacity_limit: int | None = None,
        extra_args: Iterable[str] = (),
        lvm: LvmVg | None = None,
        extra_env: dict[str, str] | None = None,
        launcher: Iterable[str] = (),
    ) -> None:
        self.root = root
        self.pool = pool  # the file pool's directory (created, unused, for lvm-loop)
        self.lvm = lvm
        self.node_id = node_id or f"node-{uuid.uuid4().hex[:8]}"
        self.socket = os.path.join(root, "csi.sock")
        self.state_dir = os.path.join(root, "state")
        self.log_path = os.path.join(root, "agent.stderr")
        self.services = services
        self.capacity_limit = capacity_limit
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.launcher = list(launcher)  # a command the agent runs under, e.g. unshare for its own mount namespace
        self.process: AgentProcess | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # the running agent's process
        self.channel: grpc.Channel | None = None
        self.returncode: int | None = None
        os.makedirs(self.pool, exist_ok=True)
        os.makedirs(os.path.join(root, "mnt"), exist_ok=True)

    # -- process ----------------------------------------------------------

    def command(self) -> list[str]:
        """The agent's arguments after ``--endpoint``."""
        cmd = [
            "--node-id", self.node_id,
            "--pool", self.pool_spec,
            "--state-dir", self.state_dir,
            "--log-level", "debug",
        ]
        if self.lvm is not None:
            cmd += self.lvm.agent_args()
        if self.services:
            cmd += ["--services", self.services]
        if self.capacity_limit is not None:
            cmd += ["--pool-capacity-limit", str(self.capacity_limit)]
        return cmd + self.extra_args

    @property
    def kind(self) -> str:
        return self.lvm.kind if self.lvm is not None else FILE_KIND

    @property
    def pool_spec(self) -> str:
        return self.lvm.pool_spec() if self.lvm is not None else f"file:{self.pool}"

    def env(self) -> dict[str, str]:
        env = agent_env()
        if self.lvm is not None:
            env.update(self.lvm.env())
        env.update(self.extra_env)
        return env

    def start(self, wait_ready: bool = True) -> Agent:
        self.process = LaunchedAgent(self.launcher, self.socket, self.command(), log_path=self.log_path,
                                     env=self.env(), cwd=self.root)
        self.process.start()
        self.proc = self.process.proc
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.identity = TimedStub(csi_grpc.IdentityStub(self.channel))
        self.ctl = TimedStub(csi_grpc.ControllerStub(self.channel))
        self.node = TimedStub(csi_grpc.NodeStub(self.channel))
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.process is not None
        try:
            self.process.wait_ready(timeout, poll=0.1)
        except AgentFailed as failure:
            self.stop()
            pytest.fail(str(failure))

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is not None:
            self.returncode = self.process.stop(timeout)
            self.process = None
            self.proc = None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the agent (a crash), unless it already died (a crash point killed it)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.returncode = self.proc.wait(10)
        self.process = None
        self.proc = None

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    # -- what the pool holds on this host -----------------------------------

    def pool_loops(self) -> dict[str, str]:
        """The pool's loop devices: device -> what backs it.

        file: the image file under the pool directory; lvm-loop: ``PV@OFFSET``
        for each loop device over the PV device (an LV's mapping).
        """
        if self.lvm is None:
            return loops_under(self.pool)
        return {
            lo.device: f"{lo.back_file}@{lo.offset}"
            for lo in loop_table() if self.lvm.device and lo.back_file == self.lvm.device
        }

    def loops_for(self, backing: str) -> list[str]:
        """Loop devices attached over ``backing`` (a value of ``pool_loops``)."""
        return sorted(dev for dev, back in self.pool_loops().items() if back == backing)

    def detached(self, backing: str, timeout: float = 5.0) -> bool:
        """Whether no loop device is attached over ``backing`` (within ``timeout``).

        ``losetup -d`` of a device that something still holds open (a
        concurrent ``losetup --list`` or blkid anywhere on the host) only sets
        autoclear; the kernel detaches it when the last opener closes.
        """
        return retry_until(lambda: not self.loops_for(backing), timeout)

    def allocation_unit(self) -> int:
        """What the pool allocates in: MiB (file), the VG's extent size (lvm-loop)."""
        return self.lvm.extent_size() if self.lvm is not None else MiB

    def pool_objects(self) -> set[str]:
        """What the pool stores: files under the pool directory, or every LV of the VG."""
        if self.lvm is None:
            return files_under(self.pool)
        return set(self.lvm.lvs())

    # -- convenience --------------------------------------------------------

    def path(self, *parts: str) -> str:
        """A fresh path under the agent's tmp tree (parent created, leaf not)."""
        p = os.path.join(self.root, "mnt", uuid.uuid4().hex[:10], *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def staging_dir(self) -> str:
        """A staging path as a CO makes it: an existing directory."""
        p = self.path("globalmount")
        os.makedirs(p)
        return p

    def create_volume(
        self,
        size: int | None = 16 * MiB,
        cap: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> Any:
        req = csi.CreateVolumeRequest(
            name=name or unique(),
            volume_capabilities=[cap if cap is not None else mount_cap()],
            **kwargs,
        )
        if size is not None:
            req.capacity_range.CopyFrom(exact(size))
        return self.ctl.CreateVolume(req).volume

    def stage(self, volume_id: str, cap: Any, staging: str | None = None, **kw: Any) -> str:
        staging = staging or self.staging_dir()
        self.node.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=staging, volume_capability=cap, **kw
            )
        )
        return staging

    def publish(
        self, volume_id: str, cap: Any, staging: str, target: str | None = None,
        readonly: bool = False, **kw: Any,
    ) -> str:
        target = target or self.path("mount")
        self.node.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=volume_id, staging_target_path=staging, target_path=target,
                volume_capability=cap, readonly=readonly, **kw,
            )
        )
        return target

    def unpublish(self, volume_id: str, target: str) -> None:
        self.node.NodeUnpublishVolume(
            csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target)
        )

    def unstage(self, volume_id: str, staging: str) -> None:
        self.node.NodeUnstageVolume(
            csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging)
        )

    def list_all_volumes(self) -> list[Any]:
        entries, token = [], ""
        for _ in range(10_000):
            resp = self.ctl.ListVolumes(csi.ListVolumesRequest(max_entries=50, starting_token=token))
            entries += list(resp.entries)
            token = resp.next_token
            if not token:
                return entries
        pytest.fail("ListVolumes pagination never ended")


@dataclass
class Attached:
    """A volume staged (and optionally published) through the agent."""

    volume_id: str
    staging: str
    image: str | None  # the image file (file pool); None for lvm-loop
    backing: str = ""  # what backs the loop device, as Agent.pool_loops() says
    target: str | None = None
    device: str | None = None
    publish_context: dict[str, str] = field(default_factory=dict)


def stage_tracking_image(agent: Agent, volume_id: str, cap: Any, **kw: Any) -> Attached:
    """NodeStage and find out which loop device it attached, and what backs it.

    file: an image file under the pool directory; lvm-loop: the PV device at
    the offset of the volume's LV (checked against LVM's report).
    """
    before = agent.pool_loops()
    staging = agent.stage(volume_id, cap, **kw)
    new = {d: b for d, b in agent.pool_loops().items() if d not in before}
    assert len(new) == 1, f"expected one new loop device backed by the pool, got {new}"
    device, backing = next(iter(new.items()))
    if agent.lvm is not None:
        offset, length = agent.lvm.lv_location(volume_lv_name(volume_id))
        assert backing == f"{agent.lvm.device}@{offset}", (
            f"{device} is at {backing}, not at the LV's offset {offset}"
        )
        size = int(subprocess.run(["blockdev", "--getsize64", device], check=True,
                                  capture_output=True, text=True).stdout)
        assert size == length, f"{device} is {size} bytes, the LV {length}"
        return Attached(volume_id=volume_id, staging=staging, image=None, backing=backing, device=device)
    return Attached(volume_id=volume_id, staging=staging, image=backing, backing=backing, device=device)


def retry_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def iter_log_records(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


def bring_up(
    agent: Agent, vol: Any, cap: Any, publish: bool = True, readonly: bool = False
) -> Attached:
    """ControllerPublish, NodeStage and (optionally) NodePublish, like a CO does."""
    ctx = agent.ctl.ControllerPublishVolume(
        csi.ControllerPublishVolumeRequest(
            volume_id=vol.volume_id, node_id=agent.node_id, volume_capability=cap,
            readonly=readonly, volume_context=vol.volume_context,
        )
    ).publish_context
    att = stage_tracking_image(
        agent, vol.volume_id, cap, publish_context=ctx, volume_context=vol.volume_context
    )
    att.publish_context = dict(ctx)
    if publish:
        att.target = agent.publish(
            vol.volume_id, cap, att.staging, readonly=readonly,
            publish_context=ctx, volume_context=vol.volume_context,
        )
    return att


def tear_down(agent: Agent, att: Attached) -> None:
    """NodeUnpublish, NodeUnstage and ControllerUnpublish; checks the loop device is gone."""
    if att.target:
        agent.unpublish(att.volume_id, att.target)
        assert not os.path.lexists(att.target), "NodeUnpublish must remove the target path"
    agent.unstage(att.volume_id, att.staging)
    assert not is_mounted(att.staging)
    if att.backing:
        assert agent.detached(att.backing), (
            f"loop device still attached over {att.backing}: "
            f"{[lo for lo in loop_table() if lo.device in agent.loops_for(att.backing)]}"
        )
    agent.ctl.ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=att.volume_id, node_id=agent.node_id)
    )
