"""Waiting for a block device: udev events through pyudev where it can listen, polling where it cannot.

pyudev is a dependency of the agent but optional for the core (the hosts
Ansible modules run on may lack it).  With it, a netlink monitor on the block
subsystem wakes a wait as soon as something changes: source "udev" where udevd
runs (its events come after its rules made the /dev links), "kernel" otherwise
(the kernel's own events need no udevd).  Without it, or between events as a
fallback, the wait polls.  A device that is already there costs no monitor.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any, Callable, Optional, TypeVar

from .devices import is_block_device
from .errors import Precondition

T = TypeVar("T")
#: udevd's control socket: present while udevd runs
UDEV_CONTROL = "/run/udev/control"
POLL_INTERVAL = 0.25
#: how long a device node may take to appear after the tool that made it returned
NODE_TIMEOUT = 30.0


def udev_running() -> bool:
    return os.path.exists(UDEV_CONTROL)


def _pyudev() -> Any:
    try:
        import pyudev
    except ImportError:  # pragma: no cover - depends on the host
        return None
    return pyudev


def monitor(use_udev: Optional[bool] = None) -> Any:
    """A started pyudev monitor of block devices, or None (use_udev False, no pyudev, netlink refused)."""
    pyudev = _pyudev()
    if pyudev is None or use_udev is False:
        return None
    try:
        watcher = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev" if udev_running() else "kernel")
        watcher.filter_by("block")
        watcher.start()
        return watcher
    except (OSError, ValueError):  # pragma: no cover - depends on the host
        return None


def wait_for(find: Callable[[], Optional[T]], timeout: float, *, use_udev: Optional[bool] = None,
             poll_interval: float = POLL_INTERVAL) -> Optional[T]:
    """What *find* returns once it is not None, woken by block-device events; None after *timeout*."""
    found = find()
    if found is not None:
        return found
    watcher = monitor(use_udev)
    deadline = time.monotonic() + timeout
    try:
        while True:
            found = find()  # again: an event may have come between the first look and the monitor's start
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(remaining, poll_interval)
            if watcher is not None:
                select.select([watcher], [], [], wait)
                while watcher.poll(timeout=0) is not None:  # drain: find() looks anyway
                    pass
            else:
                time.sleep(wait)
    finally:
        watcher = None  # pyudev's Monitor has no stop(); dropping it closes the netlink socket


def wait_for_node(path: str, timeout: float, **kwargs: Any) -> bool:
    """Whether the block device (or udev's link to it) at *path* exists within *timeout*."""
    return wait_for(lambda: path if is_block_device(path) else None, timeout, **kwargs) is not None


def appeared(path: str, what: str, timeout: float = NODE_TIMEOUT) -> str:
    """*path* once it is there: where udevd runs it makes the node's links after the kernel's event; without
    udevd, devtmpfs makes the node and LVM its links, the latter as it ends (after the line the agent's answer
    may come at: lvm.create_linear): so wait for them either way. Precondition otherwise."""
    if not wait_for_node(path, timeout):
        hint = ": is udevd processing events?" if udev_running() else ""
        raise Precondition(f"{path} ({what}) did not appear within {timeout:g}s{hint}")
    return path
