"""Freezing a mounted filesystem for a point-in-time copy: bounded, and never outliving its process.

``fsfreeze`` blocks every writer of a filesystem until it is thawed, so a
freeze must end whatever happens to the process that made it:

* a *thaw guard*, a tiny child process started before the freeze, thaws the
  filesystem when its pipe from us closes (we died: SIGKILL, OOM) or when the
  bound passes (the copy is too slow), and otherwise when we tell it to;
* a *record* of the freeze, written before it and removed after the thaw,
  lets start-up thaw what even the guard could not (the whole container was
  killed at once).

A copy that outlasts the bound fails with a Precondition: the filesystem was
thawed meanwhile, so the copy is not point in time and is not handed out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
from typing import IO, Iterator, List, Optional, cast

from . import devices
from . import mount as mounts
from .atomicfile import read_json, remove_durably, write_json
from .errors import CommandFailed, Precondition
from .runner import operand, run

log = logging.getLogger(__name__)

#: longest a filesystem stays frozen for a copy, in seconds (the README states it)
DEFAULT_LIMIT = 30.0

# The guard, run as ``python3 -c``: stdlib only, so it also works inside an Ansible module's payload.
# Its own session, so a signal to the agent's process group does not take it down with the agent.
_GUARD = """
import os, select, subprocess, sys
mount_point, limit = sys.argv[1], float(sys.argv[2])
orders = os.fdopen(0, "rb", buffering=0)  # unbuffered: select() must see what readline() has not read
print("ready", flush=True)
order = orders.readline().strip()  # b"frozen"; b"keep" when the freeze failed; b"" (EOF) when the agent died
if order == b"keep":
    sys.exit(0)
expired = False
if order == b"frozen":
    expired = not select.select([orders], [], [], limit)[0]
thaw = subprocess.run(["fsfreeze", "--unfreeze", mount_point], capture_output=True, text=True,
                      env=dict(os.environ, LC_ALL="C"))
try:
    if expired:
        print("expired", flush=True)
    elif thaw.returncode != 0:
        print("failed " + " ".join(thaw.stderr.split()), flush=True)
    else:
        print("thawed", flush=True)
except BrokenPipeError:  # nobody left to tell
    pass
"""


def freeze(mount_point: str) -> None:
    run(["fsfreeze", "--freeze", operand(mount_point, "mount point")], what=f"freeze {mount_point}")


def _record_path(record_dir: str, mount_point: str) -> str:
    return os.path.join(record_dir, hashlib.sha256(mount_point.encode()).hexdigest() + ".json")


def mount_point_of(device: Optional[str]) -> Optional[str]:
    """Where the filesystem on *device* is mounted whole on this host (None: not mounted, or no device)."""
    if device is None:
        return None
    number = devices.device_number(device)
    return next((e.mount_point for e in mounts.mounts() if e.major_minor == number and e.root == "/"), None)


@contextlib.contextmanager
def frozen(device: Optional[str], limit: float = DEFAULT_LIMIT, record_dir: Optional[str] = None) -> Iterator[None]:
    """Keep the filesystem on *device* frozen while the block runs, at most *limit* seconds.

    Nothing is frozen when *device* is None or not mounted here.  Raises
    Precondition after the block when the guard had to thaw it early.
    A copy taken meanwhile is what a crash at that instant would leave:
    consistent for a journaling filesystem.
    """
    mount_point = mount_point_of(device)
    if mount_point is None:
        yield
        return
    operand(mount_point, "mount point")
    record = None
    if record_dir is not None:
        os.makedirs(record_dir, mode=0o700, exist_ok=True)
        record = _record_path(record_dir, mount_point)
        write_json(record, {"mount_point": mount_point})
    guard = subprocess.Popen(
        [sys.executable, "-c", _GUARD, mount_point, str(limit)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, start_new_session=True, close_fds=True)
    to_guard, from_guard = cast(IO[str], guard.stdin), cast(IO[str], guard.stdout)  # both PIPE: never None
    outcome = "keep"
    try:
        if from_guard.readline().strip() != "ready":
            raise Precondition(f"the thaw guard for {mount_point} did not start: refusing to freeze it")
        freeze(mount_point)
        outcome = "thaw"
        to_guard.write("frozen\n")  # the limit runs from here
        to_guard.flush()
        yield
    finally:
        outcome = _end(guard, to_guard, from_guard, outcome)
        if record is not None and not outcome.startswith("failed"):
            remove_durably(record)
    if outcome == "expired":
        raise Precondition(
            f"copying the volume mounted at {mount_point} took longer than the freeze limit of {limit:g}s: "
            "it was thawed and the copy discarded; copy it while it is idle or unpublished, or raise the limit")
    if outcome.startswith("failed"):
        raise CommandFailed(["fsfreeze", "--unfreeze", mount_point], 1, outcome[len("failed "):],
                            f"thaw {mount_point}")


def _end(guard: "subprocess.Popen[str]", to_guard: IO[str], from_guard: IO[str], order: str) -> str:
    """Tell the guard to thaw (or, when nothing was frozen, to keep its hands off); return what it did."""
    try:
        to_guard.write(order + "\n")
        to_guard.close()
    except BrokenPipeError:  # it already acted on the limit
        pass
    answer = from_guard.readline().strip()
    from_guard.close()
    guard.wait()
    if order == "keep":
        return "keep"
    return answer or "failed the thaw guard exited without an answer"


def thaw_recorded(record_dir: str) -> List[str]:
    """Thaw every filesystem a freeze record names (start-up: their freezer is gone); return them."""
    thawed = []
    try:
        names = sorted(n for n in os.listdir(record_dir) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    for name in names:
        path = os.path.join(record_dir, name)
        document = read_json(path) or {}
        mount_point = str(document.get("mount_point", ""))
        if mount_point.startswith("/"):
            # "Invalid argument" when it is not frozen (the guard thawed it): nothing to do.
            result = run(["fsfreeze", "--unfreeze", operand(mount_point, "mount point")], check=False,
                         what=f"thaw {mount_point}")
            if result.rc == 0:
                log.warning("thawed %s, frozen by an interrupted copy", mount_point)
                thawed.append(mount_point)
        remove_durably(path)
    return thawed
