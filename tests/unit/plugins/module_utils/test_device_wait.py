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
