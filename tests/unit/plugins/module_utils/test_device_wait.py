"""device_wait: a real loop device appearing wakes the wait through the kernel's uevents (pyudev, no udevd
needed), or polling finds it when events are off; the loop devices are the test's own, detached by name."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from basalt_core import device_wait, losetup
from basalt_core.errors import Precondition


@pytest.fixture
def image(tmp_path: Path) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("attaches loop devices (root)")
    path = tmp_path / "wait.img"
    with open(path, "wb") as handle:
        handle.truncate(1 << 20)
    yield str(path)
    for loop in losetup.over([str(path)]):  # ours only: found by backing file
        subprocess.run(["losetup", "--detach", loop.device], check=False, timeout=30)


def attach_later(path: str, delay: float) -> threading.Thread:
    def attach() -> None:
        time.sleep(delay)
        subprocess.run(["losetup", "--find", "--show", path], check=True, capture_output=True, timeout=30)
    thread = threading.Thread(target=attach)
    thread.start()
    return thread


def found(path: str) -> Optional[str]:
    loop = losetup.find(path)
    return loop.device if loop else None


def test_a_kernel_event_wakes_the_wait_long_before_the_next_poll(image: str) -> None:
    assert device_wait._pyudev() is not None, "pyudev is a dependency of the agent: pip install -e ."
    assert device_wait.monitor(True) is not None, "netlink uevents are readable on this host (MACHINE.md)"
    thread = attach_later(image, 0.3)
    started = time.monotonic()
    device = device_wait.wait_for(lambda: found(image), timeout=90, use_udev=True, poll_interval=60)
    took = time.monotonic() - started
    thread.join()
    assert device is not None and device == found(image)
    assert took < 30, f"woke after {took:.1f}s: the event did not wake the wait (the poll is every 60s)"


def test_without_events_it_polls(image: str) -> None:
    thread = attach_later(image, 0.2)
    device = device_wait.wait_for(lambda: found(image), timeout=20, use_udev=False, poll_interval=0.05)
    thread.join()
    assert device is not None and device == found(image)


def test_nothing_appears_within_the_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    assert device_wait.wait_for(lambda: None, timeout=0.3, use_udev=False, poll_interval=0.05) is None
    assert 0.3 <= time.monotonic() - started < 5
    assert device_wait.wait_for_node(str(tmp_path / "no-device"), 0.1, use_udev=False) is False


def test_a_device_name_is_waited_for_with_or_without_udevd(image: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``appeared``: without udevd too (LVM makes an LV's links as it ends, after the line CreateVolume may
    answer at), a name that is not there yet is waited for: here a link made a moment later to a real loop
    device; one that never comes is a Precondition naming it."""
    monkeypatch.setattr(device_wait, "udev_running", lambda: False)
    device = losetup.attach(image).device
    link = tmp_path / "vg" / "lv"

    def make_link() -> None:
        time.sleep(0.2)
        link.parent.mkdir()
        link.symlink_to(device)
    thread = threading.Thread(target=make_link)
    thread.start()
    assert device_wait.appeared(str(link), "activated LV vg/lv", timeout=20) == str(link)
    thread.join()
    with pytest.raises(Precondition, match=r"/no-device \(activated LV vg/gone\) did not appear"):
        device_wait.appeared(str(tmp_path / "no-device"), "activated LV vg/gone", timeout=0.2)
