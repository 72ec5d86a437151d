"""Deterministic crash points for a real agent, set from the test side.

``CrashPoints(directory).wrap(tool)`` puts a wrapper named *tool* in a bin
directory that goes first on the agent's PATH (``Agent(extra_env=...env())``).
Unarmed, the wrapper just runs the real tool.  ``arm(tool, ...)`` makes its
next matching run SIGKILL the agent (its parent: the core runs tools
directly, never through a shell; or the parent of the ``timeout`` it runs a tool
under) at one moment:

* ``when="before"``: the tool never runs (what the agent did before it is all done);
* ``when="after"``: the tool finished (its side effect is complete, the agent
  never learns it: its output is held back until then, so that an agent that
  answers at a line the tool prints, before its exit, does not see it);
* ``when="answered"``: the tool's output passes as it comes; once the tool has
  ended and the test has said ``go(tool)`` (the agent answered its call before
  that exit), the agent is killed;
* ``when="magic"``: the tool is still running and the bytes *magic* appeared
  at *offset* of its last operand (e.g. ``XFSB``: mkfs.xfs wrote its
  superblock, the rest is not made yet); the tool is killed too;
* ``when="grown"``: the tool is still running and the file its operand
  number *watch* names has reached *size* bytes (e.g. resize2fs's undo file:
  that many old blocks saved, their new content written); the tool runs at
  the lowest CPU priority meanwhile and is killed too (a tool that ends
  first reports ``exited``);
* ``when="delay"``: *delay_ms* after the tool started; the tool is killed too.

The wrapper leaves ``<tool>.fired`` saying what happened, so a test can check
that the crash really came at that point.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

_WRAPPER = """#!{python}
import json, os, signal, subprocess, sys, time
REAL, ARM = {real!r}, {arm!r}
mine = ARM + ".%d" % os.getpid()
try:
    os.rename(ARM, mine)
except FileNotFoundError:
    os.execv(REAL, [REAL] + sys.argv[1:])
with open(mine) as handle:
    spec = json.load(handle)
if spec.get("arg") and spec["arg"] not in sys.argv[1:]:
    os.rename(mine, ARM)  # not this run: stay armed
    os.execv(REAL, [REAL] + sys.argv[1:])
os.unlink(mine)
agent, started = os.getppid(), time.monotonic()
with open("/proc/%d/comm" % agent) as comm:
    if comm.read().strip() == "timeout":  # run under timeout (the pool's VG lock keeper): its parent ran it
        with open("/proc/%d/stat" % agent) as stat:
            agent = int(stat.read().rsplit(")", 1)[1].split()[1])
if spec["when"] == "before":
    os.kill(agent, signal.SIGKILL)
    with open(ARM + ".tmp", "w") as handle:
        json.dump({{"outcome": "before", "argv": sys.argv, "rc": None, "seconds": 0}}, handle)
    os.rename(ARM + ".tmp", ARM + ".fired")
    sys.exit(137)
# watching a file grow: the tool at the lowest priority, so that the watcher sees it on a loaded host
tool = subprocess.Popen([REAL] + sys.argv[1:], preexec_fn=(lambda: os.nice(19)) if spec["when"] == "grown" else None,
                        stdout=subprocess.PIPE if spec["when"] == "after" else None)
outcome = "exited"
if spec["when"] == "after":
    tool.communicate()  # its output never reaches the agent
    outcome = "after"
elif spec["when"] == "answered":
    tool.wait()
    deadline = time.monotonic() + 60
    while not os.path.exists(ARM + ".go") and time.monotonic() < deadline:
        time.sleep(0.01)
    outcome = "answered" if os.path.exists(ARM + ".go") else "no answer"
elif spec["when"] == "delay":
    try:
        tool.wait(spec["delay_ms"] / 1000)
    except subprocess.TimeoutExpired:
        outcome = "during"
else:
    magic, watched = bytes.fromhex(spec["magic"]), None
    while tool.poll() is None:  # busy: the window can be a few milliseconds
        if watched is None:
            try:
                watched = os.open(sys.argv[1:][spec["watch"]], os.O_RDONLY)
            except FileNotFoundError:  # the tool has not made it yet
                continue
        if (os.fstat(watched).st_size >= spec["size"] if spec["when"] == "grown"
                else os.pread(watched, len(magic), spec["offset"]) == magic):
            outcome = "during"
            break
os.kill(agent, signal.SIGKILL)
if tool.poll() is None:
    tool.kill()
rc = tool.wait()
with open(ARM + ".tmp", "w") as handle:
    json.dump({{"outcome": outcome, "argv": sys.argv, "rc": rc,
               "seconds": time.monotonic() - started}}, handle)
os.rename(ARM + ".tmp", ARM + ".fired")
sys.exit(137)
"""


class CrashPoints:
    def __init__(self, directory: str) -> None:
        self.bin = os.path.join(directory, "crashpoints")
        os.makedirs(self.bin, exist_ok=True)

    def env(self) -> dict[str, str]:
        return {"PATH": self.bin + os.pathsep + os.environ.get("PATH", "")}

    def wrap(self, *tools: str) -> CrashPoints:
        for tool in tools:
            real = shutil.which(tool)
            assert real is not None, f"{tool} is not installed"
            path = os.path.join(self.bin, tool)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(_WRAPPER.format(python=sys.executable, real=real, arm=self._arm(tool)))
            os.chmod(path, 0o755)
        return self

    def _arm(self, tool: str) -> str:
        return os.path.join(self.bin, tool + ".arm")

    def arm(self, tool: str, when: str, *, arg: str = "", magic: bytes = b"", offset: int = 0,
            delay_ms: float = 0, watch: int = -1, size: int = 0) -> None:
        assert os.path.exists(os.path.join(self.bin, tool)), f"wrap({tool!r}) first"
        self.disarm(tool)
        with open(self._arm(tool), "w", encoding="utf-8") as handle:
            json.dump({"when": when, "arg": arg, "magic": magic.hex(), "offset": offset, "delay_ms": delay_ms,
                       "watch": watch, "size": size}, handle)

    def go(self, tool: str) -> None:
        """``when="answered"``: the agent answered; kill it (once the tool has ended)."""
        with open(self._arm(tool) + ".go", "w", encoding="utf-8"):
            pass

    def disarm(self, tool: str) -> None:
        for path in (self._arm(tool), self._arm(tool) + ".fired", self._arm(tool) + ".go"):
            if os.path.exists(path):
                os.unlink(path)

    def fired(self, tool: str, timeout: float = 30.0) -> dict[str, object]:
        """What the crash point did (waits for it); fails the test when it never fired."""
        path = self._arm(tool) + ".fired"
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            assert time.monotonic() < deadline, f"the {tool} crash point never fired"
            time.sleep(0.02)
        with open(path, encoding="utf-8") as handle:
            result: dict[str, object] = json.load(handle)
        return result
