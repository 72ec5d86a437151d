"""Loop devices attached and detached by ioctls (no ``losetup`` process), on real loop devices.

Every test touches only devices it attached itself (recorded by name, detached at the end) and never
assumes a device number: other tests attach and detach theirs at the same time.  ``losetup`` itself is the
reference: what it lists (``--list --json``) and what it makes for the same request.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import subprocess
import threading
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from basalt_core import losetup
from basalt_core.errors import CommandFailed

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(losetup.LOOP_CONTROL),
                                reason="needs root and loop devices")

MiB = 1 << 20
#: what losetup lists of a device, beside its name and backing file
SHOWN = "NAME,BACK-FILE,OFFSET,SIZELIMIT,RO,AUTOCLEAR,PARTSCAN,DIO,LOG-SEC,BACK-INO,BACK-MAJ:MIN"
#: the kernel's own attributes of a bound device
ATTRIBUTES = ("loop/offset", "loop/sizelimit", "loop/autoclear", "loop/partscan", "loop/dio", "ro", "size",
              "queue/logical_block_size")
_LOOP_CTL_ADD, _LOOP_CTL_REMOVE = 0x4C80, 0x4C81


@pytest.fixture
def attached(tmp_path: Any) -> Iterator[List[str]]:
    """The devices a test attached: detached at its end (each only while it is still over the test's files)."""
    made: List[str] = []
    yield made
    for device in made:
        with contextlib.suppress(CommandFailed, OSError):
            found = losetup._device(device)
            if found is not None and found.backing_path.startswith(f"{tmp_path}/"):
                losetup.detach(device)


def image(tmp_path: Any, name: str, size: int = 16 * MiB) -> str:
    path = tmp_path / name
    path.write_bytes(b"")
    os.truncate(path, size)
    return str(path)


def listed(device: str) -> Dict[str, Any]:
    out = subprocess.run(["losetup", "--list", "--json", "--output", SHOWN, device], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    entry: Dict[str, Any] = json.loads(out)["loopdevices"][0]
    return entry


def sysfs(device: str) -> Dict[str, str]:
    base = os.path.join(losetup.SYS_BLOCK, os.path.basename(device))
    values = {}
    for name in ATTRIBUTES:
        with open(os.path.join(base, name), encoding="utf-8") as handle:
            values[name] = handle.read().strip()
    return values


def file_name(device: str) -> bytes:
    """lo_file_name, as LOOP_GET_STATUS64 shows it (what losetup shows for a device without sysfs)."""
    fd = os.open(device, os.O_RDONLY)
    try:
        status = bytearray(232)
        fcntl.ioctl(fd, 0x4C05, status)
    finally:
        os.close(fd)
    return bytes(status[56:120]).rstrip(b"\0")


@pytest.mark.parametrize(("offset", "size_limit", "read_only"),
                         [(0, 0, False), (MiB, 8 * MiB, False), (2 * MiB, 0, True), (0, 4 * MiB, True)],
                         ids=["whole-file", "range", "tail-read-only", "head-read-only"])
def test_attach_makes_what_losetup_makes(tmp_path: Any, attached: List[str], offset: int, size_limit: int,
                                         read_only: bool) -> None:
    """The device made by ioctls and the one ``losetup --find --nooverlap`` makes for the same request look
    the same to util-linux and in sysfs (but for name, backing file and inode); detach unbinds it."""
    ours_file, theirs_file = image(tmp_path, "ours.img"), image(tmp_path, "theirs.img")
    ours = losetup.attach(ours_file, offset=offset, size_limit=size_limit, read_only=read_only)
    attached.append(ours.device)
    argv = ["losetup", "--find", "--show", "--nooverlap", "--offset", str(offset), "--sizelimit", str(size_limit)]
    theirs = subprocess.run(argv + (["--read-only"] if read_only else []) + [theirs_file], check=True,
                            capture_output=True, text=True, timeout=30).stdout.strip()
    attached.append(theirs)
    assert ours == losetup.LoopDevice(ours.device, ours_file, offset, size_limit, read_only)
    assert losetup.find(ours_file, offset, size_limit) == ours
    mine, reference = listed(ours.device), listed(theirs)
    assert (mine.pop("name"), mine.pop("back-file")) == (ours.device, ours_file)
    assert (reference.pop("name"), reference.pop("back-file")) == (theirs, theirs_file)
    assert mine.pop("back-ino") == os.stat(ours_file).st_ino
    reference.pop("back-ino")
    assert mine == reference
    assert sysfs(ours.device) == sysfs(theirs)
    assert file_name(ours.device) == ours_file.encode()[:63] and file_name(theirs) == theirs_file.encode()[:63]
    losetup.detach(ours.device)
    assert losetup._device(ours.device) is None and losetup.find(ours_file, offset) is None
    attached.remove(ours.device)


def test_reuse_and_refusal_follow_nooverlap(tmp_path: Any, attached: List[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``--nooverlap``: the device attached exactly so is answered (a read-only one only to a read-only
    request; a writable one to both), an overlapping range is refused with losetup's words, a range beside
    it is attached; with *likely* right, no other device is read."""
    path = image(tmp_path, "pv.img", 64 * MiB)
    writable = losetup.attach(path, offset=MiB, size_limit=8 * MiB)
    attached.append(writable.device)
    assert losetup.attach(path, offset=MiB, size_limit=8 * MiB) == writable
    assert losetup.ensure_attached(path, offset=MiB, size_limit=8 * MiB, read_only=True) == (writable, False)
    for offset, size_limit in ((0, 0), (0, 2 * MiB), (8 * MiB, 4 * MiB), (MiB, 4 * MiB), (4 * MiB, 0)):
        with pytest.raises(CommandFailed, match="overlapping loop device exists") as refused:
            losetup.attach(path, offset=offset, size_limit=size_limit)
        assert refused.value.rc == 1 and path in str(refused.value)
    beside = losetup.attach(path, offset=9 * MiB, size_limit=8 * MiB, read_only=True)
    attached.append(beside.device)
    assert beside.device != writable.device and beside.read_only
    with pytest.raises(CommandFailed, match="overlapping read-only loop device exists"):
        losetup.attach(path, offset=9 * MiB, size_limit=8 * MiB)
    assert losetup.attach(path, offset=0, size_limit=MiB).offset == 0  # before the first one: no overlap
    attached.append(losetup.find(path, 0, MiB).device)  # type: ignore[union-attr]
    scans: List[str] = []
    real = losetup._backed_by

    def counted(wanted: str) -> List[losetup.LoopDevice]:
        scans.append(wanted)
        return real(wanted)
    monkeypatch.setattr(losetup, "_backed_by", counted)
    assert losetup.attach(path, offset=MiB, size_limit=8 * MiB, likely=writable.device) == writable
    assert scans == []
    assert losetup.attach(path, offset=MiB, size_limit=8 * MiB, likely=beside.device) == writable
    assert scans == [path]


def test_the_attached_devices_read_are_those_with_a_capacity(tmp_path: Any, attached: List[str]) -> None:
    """The lookup of attach and find reads the devices /proc/partitions lists: every device over the file that
    ``list_devices`` (each node's sysfs) shows, but one bound to a range past the file's end (no capacity, no
    data), which util-linux 2.38 would see."""
    path = image(tmp_path, "pv.img", 16 * MiB)
    for offset, size_limit in ((0, 4 * MiB), (4 * MiB, 4 * MiB)):
        attached.append(losetup.attach(path, offset=offset, size_limit=size_limit).device)
    empty = losetup.attach(path, offset=32 * MiB, size_limit=MiB)  # past the end: bound, capacity 0
    attached.append(empty.device)
    listed_over = [device for device in losetup.list_devices() if device.backing_file == path]
    assert {device.device for device in listed_over} == set(attached)
    assert losetup._backed_by(path) == [device for device in listed_over if device.device != empty.device]
    assert losetup.find(path, 4 * MiB) == losetup.LoopDevice(attached[1], path, 4 * MiB, 4 * MiB, False)
    assert losetup.find(path, 32 * MiB) is None


def test_an_attacher_racing_us_to_the_free_device_makes_us_take_another(
        tmp_path: Any, attached: List[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The free device handed out is taken (by ``losetup`` here) before LOOP_CONFIGURE: EBUSY, and the attach
    asks for another free device, as util-linux does."""
    ours_file, theirs_file = image(tmp_path, "ours.img"), image(tmp_path, "theirs.img")
    real = losetup._free_device
    given: List[int] = []

    def raced(what: str) -> int:
        number = real(what)
        given.append(number)
        if len(given) == 1:  # the other attacher gets the same free device (or the next, if a third took it)
            attached.append(subprocess.run(["losetup", "--find", "--show", theirs_file], check=True,
                                           capture_output=True, text=True, timeout=30).stdout.strip())
        return number
    monkeypatch.setattr(losetup, "_free_device", raced)
    ours = losetup.attach(ours_file)
    attached.append(ours.device)
    assert len(given) >= 2 and ours.device != attached[0]
    assert losetup.find(ours_file) == ours and losetup.find(theirs_file).device == attached[0]  # type: ignore


def test_concurrent_attaches_each_get_a_device_of_their_own(tmp_path: Any, attached: List[str]) -> None:
    """Two threads attaching different files at the same moment, many times: each gets its own device over
    its own file (the loser of a race for a free device takes the next one)."""
    files = [image(tmp_path, f"vol-{n}.img", MiB) for n in range(2)]

    def attach_one(start: threading.Barrier, results: List[Tuple[str, Any]], path: str) -> None:
        start.wait()
        try:
            results.append((path, losetup.attach(path)))
        except CommandFailed as error:  # reported below
            results.append((path, error))
    for _round in range(25):
        start = threading.Barrier(2)
        results: List[Tuple[str, Any]] = []
        threads = [threading.Thread(target=attach_one, args=(start, results, path)) for path in files]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        attached.extend(device.device for _path, device in results if isinstance(device, losetup.LoopDevice))
        assert all(isinstance(device, losetup.LoopDevice) for _path, device in results), results
        assert len({device.device for _path, device in results}) == 2
        for path, device in results:
            assert losetup.find(path) == device
        for _path, device in results:
            losetup.detach(device.device)
            attached.remove(device.device)


def test_detach_of_a_held_device_unbinds_it_at_the_last_close(
        tmp_path: Any, attached: List[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """LOOP_CLR_FD on a device someone holds sets autoclear (what ``losetup --detach`` shows too); the kernel
    unbinds it at the holder's close."""
    monkeypatch.setattr(losetup, "DETACH_SETTLE", 0.05)
    path = image(tmp_path, "vol.img")
    device = losetup.attach(path).device
    attached.append(device)
    holder = os.open(device, os.O_RDONLY)
    try:
        losetup.detach(device)
        assert listed(device)["autoclear"] is True
        found = losetup.find(path)
        assert found is not None and found.detaching
    finally:
        os.close(holder)
    assert losetup._device(device) is None and losetup.find(path) is None
    attached.remove(device)


@pytest.fixture
def unbound_device() -> Iterator[str]:
    """A loop device node of our own that is not bound: added at a high number nobody is handed (LOOP_CTL_GET_FREE
    hands out the lowest free one), removed at the end."""
    control = os.open(losetup.LOOP_CONTROL, os.O_RDWR)
    try:
        for _attempt in range(20):
            number = random.randrange(900_000, 1_040_000)
            try:
                fcntl.ioctl(control, _LOOP_CTL_ADD, number)
                break
            except OSError as error:
                if error.errno != errno.EEXIST:
                    raise
        else:  # pragma: no cover - 20 taken numbers in a row
            pytest.fail("no free high loop number")
        yield f"/dev/loop{number}"
    finally:
        with contextlib.suppress(OSError, UnboundLocalError):
            fcntl.ioctl(control, _LOOP_CTL_REMOVE, number)
        os.close(control)


def test_detach_of_an_unbound_device_fails_as_losetup_does(unbound_device: str) -> None:
    """``losetup --detach`` of an unbound device fails with rc 1, "No such device or address": so does ours."""
    reference = subprocess.run(["losetup", "--detach", unbound_device], capture_output=True, text=True, timeout=30,
                               check=False)
    assert reference.returncode == 1 and "No such device or address" in reference.stderr
    with pytest.raises(CommandFailed) as failed:
        losetup.detach(unbound_device)
    assert failed.value.rc == 1 and failed.value.stderr == f"{unbound_device}: No such device or address"
    assert str(failed.value).startswith(f"detach {unbound_device}: ")


def test_refresh_capacity_shows_what_the_file_grew_to(tmp_path: Any, attached: List[str],
                                                      unbound_device: str) -> None:
    """As ``losetup --set-capacity``: the device grows with its file (the kernel's size, in 512-byte sectors);
    an unbound device fails as losetup does, with rc 1 and the kernel's words."""
    path = image(tmp_path, "grown.img", 8 * MiB)
    device = losetup.attach(path).device
    attached.append(device)
    os.truncate(path, 24 * MiB)
    assert int(sysfs(device)["size"]) * 512 == 8 * MiB  # the kernel does not look by itself
    losetup.refresh_capacity(device)
    assert int(sysfs(device)["size"]) * 512 == 24 * MiB
    reference = subprocess.run(["losetup", "--set-capacity", unbound_device], capture_output=True, text=True,
                               timeout=30, check=False)
    assert reference.returncode == 1 and "No such device or address" in reference.stderr
    with pytest.raises(CommandFailed) as failed:
        losetup.refresh_capacity(unbound_device)
    assert failed.value.rc == 1 and failed.value.stderr == f"{unbound_device}: No such device or address"
    assert str(failed.value).startswith(f"refresh size of {unbound_device}: ")


def test_without_loop_configure_it_binds_then_sets_the_range(tmp_path: Any, attached: List[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's kernel has LOOP_CONFIGURE (Linux 5.8+): an unused ioctl number in its place makes the
    kernel refuse it as an older kernel does (EINVAL), and the attach falls back to LOOP_SET_FD and
    LOOP_SET_STATUS64, to the same device util-linux would make."""
    monkeypatch.setattr(losetup, "_LOOP_CONFIGURE", 0x4C7F)
    calls: List[int] = []
    real_ioctl = fcntl.ioctl

    def spied(fd: int, request: int, *args: Any) -> Any:
        calls.append(request)
        return real_ioctl(fd, request, *args)
    monkeypatch.setattr(losetup.fcntl, "ioctl", spied)
    path = image(tmp_path, "vol.img")
    device = losetup.attach(path, offset=MiB, size_limit=4 * MiB, read_only=True)
    attached.append(device.device)
    assert calls[-3:] == [0x4C7F, losetup._LOOP_SET_FD, losetup._LOOP_SET_STATUS64]
    assert device == losetup.find(path, MiB, 4 * MiB)
    shown = listed(device.device)
    assert (shown["offset"], shown["sizelimit"], shown["ro"], shown["autoclear"]) == (MiB, 4 * MiB, True, False)
    assert file_name(device.device) == path.encode()[:63]
