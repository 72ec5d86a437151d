"""A crash point right after a loop device's attach, which runs no tool: the agent binds the device with an
ioctl in its own process (``basalt_core.losetup``), so the tool wrappers of ``crashpoints.py`` cannot see it.

``LoopAttachCrash(directory)`` writes a ``sitecustomize`` module that the agent imports at start when
``env()`` goes first on its PYTHONPATH.  It adds an audit hook (PEP 578: Python audits ``fcntl.ioctl``); once
``arm()`` is called, the next ``LOOP_CONFIGURE`` (or ``LOOP_SET_FD``, the older kernels' bind) arms the
thread that made it, and that thread's next audited action (an ``open``, a process started: whatever the
agent does after the attach) SIGKILLs the agent: the device is bound, the agent never used it.  A bind that
another attacher raced (EBUSY: the thread asks ``/dev/loop-control`` for another device next) stays armed.
``fired()`` says which device it was.
"""

from __future__ import annotations

import json
import os
import time

_LOOP_SET_FD, _LOOP_CONFIGURE = 0x4C00, 0x4C0A

_HOOK = """import json, os, signal, sys, threading
ARM, BINDS, CONTROL = {arm!r}, {binds!r}, "/dev/loop-control"
_bound = {{}}  # thread -> the device its bind ioctl was about


def _hook(event, args):
    thread = threading.get_ident()
    device = _bound.pop(thread, None)
    if device is not None:
        if event == "open" and args[0] == CONTROL:  # the bind failed (EBUSY): the attach takes another device
            os.rename(ARM + ".taken", ARM)  # armed again: its next bind decides
        else:
            with open(ARM + ".tmp", "w") as handle:
                json.dump({{"outcome": "after", "device": device, "next": event}}, handle)
            os.rename(ARM + ".tmp", ARM + ".fired")
            os.kill(os.getpid(), signal.SIGKILL)
    if event == "fcntl.ioctl" and args[1] in BINDS and os.path.exists(ARM):
        try:
            os.rename(ARM, ARM + ".taken")
        except FileNotFoundError:  # another thread took it
            return
        _bound[thread] = os.readlink("/proc/self/fd/%d" % args[0])


sys.addaudithook(_hook)
"""


class LoopAttachCrash:
    def __init__(self, directory: str) -> None:
        self.directory = os.path.join(directory, "loop-crashpoint")
        os.makedirs(self.directory, exist_ok=True)
        self._arm = os.path.join(self.directory, "attach.arm")
        with open(os.path.join(self.directory, "sitecustomize.py"), "w", encoding="utf-8") as handle:
            handle.write(_HOOK.format(arm=self._arm, binds=(_LOOP_CONFIGURE, _LOOP_SET_FD)))

    def env(self, python_path: str) -> dict[str, str]:
        """The agent's PYTHONPATH with the hook's directory first (*python_path*: the one it would have)."""
        return {"PYTHONPATH": os.pathsep.join([self.directory, python_path] if python_path else [self.directory])}

    def arm(self) -> None:
        self.disarm()
        with open(self._arm, "w", encoding="utf-8") as handle:
            handle.write("after\n")

    def disarm(self) -> None:
        for suffix in ("", ".taken", ".fired"):
            if os.path.exists(self._arm + suffix):
                os.unlink(self._arm + suffix)

    def fired(self, timeout: float = 30.0) -> dict[str, object]:
        """What the crash point did (waits for it); fails the test when it never fired."""
        path = self._arm + ".fired"
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            assert time.monotonic() < deadline, "the loop attach crash point never fired"
            time.sleep(0.02)
        with open(path, encoding="utf-8") as handle:
            result: dict[str, object] = json.load(handle)
        return result
