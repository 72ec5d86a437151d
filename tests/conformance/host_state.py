"""The host as the conformance tests see it: mounts (``/proc/self/mountinfo``), loop devices
(``losetup``), files, the clean-up of what a fixture made under its root, and data I/O on files
and block devices."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest

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


def retry_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()
