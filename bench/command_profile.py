"""What the agent runs behind each RPC, read from its debug log: the commands (``ProfiledAgent``), their
profile per RPC and fill level (``Profiler``) and the report tables. Shared by bench_lvm_pool and bench_iscsi."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if TYPE_CHECKING:  # mypy (scripts/lint.sh) sees the bench directory as the namespace package "bench"
    import bench.benchlib as bl
else:  # the bench directory is not a package: found through sys.path
    import benchlib as bl

# The agent's periodic clean-up (every cleanup_grace / 2 s) lists every volume;
# push it out of the run so it never lands inside a measured RPC.
CLEANUP_GRACE = 86400
LVM_TOOLS = {"lvs", "vgs", "pvs", "lvcreate", "lvremove", "lvchange", "lvextend", "vgcreate", "vgchange", "vgremove",
             "pvcreate", "pvremove", "lvm"}
_RAN = re.compile(r"^ran (\[.*\]) rc=(-?\d+) in ([0-9.]+)s$")
# a command the agent answered at its output, before its exit (runner.run's *answered*; its exit is logged
# later as ``ended [...]``): counted, with rc 0 and the time until that answer, in the RPC that ran it
_ANSWERED = re.compile(r"^ran (\[.*\]) answered in ([0-9.]+)s$")
_ENDED = re.compile(r"^ended \[")
#: the longest a tool answered before its exit may take to end (LVM's own timeouts are longer; the bench waits)
SETTLE_TIMEOUT = 60.0
# a request on tgtd's management socket (basalt_core.tgt_socket): counted as a command of the tool TGTD_SOCKET
_SENT = re.compile(r"^sent (\[.*\]) err=(-?\d+) in ([0-9.]+)s$")
TGTD_SOCKET = "tgtd-socket"


# -- the agent's debug log ---------------------------------------------------

@dataclass
class Command:
    tool: str
    argv: List[str]
    rc: int
    seconds: float
    answered: bool = False  # answered before its exit: *seconds* is the time to that answer


class ProfiledAgent(bl.Agent):
    """An agent whose debug log says which external commands it ran (``ran [...] rc=N in Ss``) and which
    requests it sent to tgtd's socket (``sent [...] err=N in Ss``)."""

    def log_mark(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def _messages_since(self, mark: int) -> List[str]:
        with open(self.log_path, "rb") as handle:
            handle.seek(mark)
            data = handle.read().decode("utf-8", errors="replace")
        messages = []
        for line in data.splitlines():
            try:
                messages.append(str(json.loads(line).get("msg", "")))
            except (ValueError, AttributeError):
                continue
        return messages

    def commands_since(self, mark: int) -> List[Command]:
        """The external commands (``ran [...]``) and tgtd socket requests (``sent [...]``) logged after *mark*."""
        found: List[Command] = []
        for message in self._messages_since(mark):
            answered = _ANSWERED.match(message)
            match = answered or _RAN.match(message) or _SENT.match(message)
            if not match:
                continue
            argv = [str(a) for a in ast.literal_eval(match.group(1))]
            tool = TGTD_SOCKET if match.re is _SENT else tool_of(argv)
            rc, seconds = (0, match.group(2)) if answered else (int(match.group(2)), match.group(3))
            found.append(Command(tool, argv, rc, float(seconds), bool(answered)))
        return found

    def settle(self, mark: int) -> None:
        """Wait until every command answered before its exit since *mark* has ended (``ended [...]`` logged), so
        that the next measurement starts as quiet as a bare command's does: an RPC answered at LVM's commit line
        leaves the tool's udev wait, backup and teardown running, under LVM's lock (device-mapper)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            messages = self._messages_since(mark)
            answered = sum(1 for m in messages if _ANSWERED.match(m))
            if sum(1 for m in messages if _ENDED.match(m)) >= answered:
                return
            if time.monotonic() >= deadline:
                raise bl.BenchError(f"{answered} commands answered before their exit did not end in "
                                    f"{SETTLE_TIMEOUT:g}s")
            time.sleep(0.002)


def tool_of(argv: List[str]) -> str:
    """The tool a logged command ran: through ``timeout --signal=KILL SECONDS TOOL ...`` (the lvm pool's
    lvcreate under its VG lock, lvm_command.run_lvm), the tool it ran."""
    if os.path.basename(argv[0]) == "timeout":
        operands = [arg for arg in argv[1:] if not arg.startswith("-")]
        if len(operands) > 1:
            return os.path.basename(operands[1])
    return os.path.basename(argv[0])


@dataclass
class Profile:
    """The commands behind each sample of one RPC (at one fill level)."""

    rpc: str
    level: int
    samples: List[List[Command]] = field(default_factory=list)
    seconds: List[float] = field(default_factory=list)

    def add(self, commands: List[Command], seconds: float) -> None:
        self.samples.append(commands)
        self.seconds.append(seconds)

    def counts(self) -> Counter[str]:
        """Commands per tool in the median sample (by count; they are the same every time)."""
        if not self.samples:
            return Counter()
        ordered = sorted(self.samples, key=len)
        return Counter(c.tool for c in ordered[len(ordered) // 2])

    def lvm_seconds(self) -> float:
        return _median([sum(c.seconds for c in s if c.tool in LVM_TOOLS) for s in self.samples])

    def all_seconds(self) -> float:
        return _median([sum(c.seconds for c in s) for s in self.samples])

    def to_json(self) -> Dict[str, Any]:
        return {"rpc": self.rpc, "level": self.level, "counts": dict(self.counts()),
                "median_rpc_ms": _median(self.seconds) * 1000, "median_commands_ms": self.all_seconds() * 1000,
                "median_lvm_ms": self.lvm_seconds() * 1000,
                "example": [{"argv": c.argv, "ms": round(c.seconds * 1000, 1), "answered": c.answered}
                            for c in (self.samples[len(self.samples) // 2] if self.samples else [])]}


def _median(values: Sequence[float]) -> float:
    return bl.Samples(list(values)).median


class Profiler:
    def __init__(self, agent: ProfiledAgent) -> None:
        self.agent = agent
        self.profiles: Dict[Tuple[str, int], Profile] = {}

    def call(self, rpc: str, level: int, action: Callable[[], Any]) -> Tuple[float, Any]:
        """Time *action* (one RPC) and file the commands the agent ran for it, once the ones it answered before
        their exit have ended."""
        mark = self.agent.log_mark()
        took, value = bl.timed(action)
        self.agent.settle(mark)  # (untimed)
        key = (rpc, level)
        self.profiles.setdefault(key, Profile(rpc, level)).add(self.agent.commands_since(mark), took)
        return took, value


# -- report --------------------------------------------------------------------------------

COUNT_COLUMNS = ("lvs", "vgs", "pvs", "lvcreate", "lvremove", "lvchange", "losetup")


def command_table(profiles: Sequence[Profile]) -> str:
    header = ["rpc", "vols", *COUNT_COLUMNS, "other", "rpc ms", "lvm ms", "lvm share", "ms/lvm cmd"]
    lines = []
    for p in profiles:
        counts = p.counts()
        other = sum(n for tool, n in counts.items() if tool not in COUNT_COLUMNS)
        rpc_ms = _median(p.seconds) * 1000
        lvm_ms = p.lvm_seconds() * 1000
        lvm_count = sum(n for tool, n in counts.items() if tool in LVM_TOOLS)
        lines.append([p.rpc, str(p.level), *(str(counts.get(t, 0)) for t in COUNT_COLUMNS), str(other),
                      f"{rpc_ms:.1f}", f"{lvm_ms:.1f}", f"{lvm_ms / rpc_ms * 100:.0f}%" if rpc_ms else "-",
                      f"{lvm_ms / lvm_count:.0f}" if lvm_count else "-"])
    widths = [max(len(x) for x in column) for column in zip(header, *lines)]

    def fmt(cells: List[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(header), rule, *[fmt(line) for line in lines]])


def describe(command: Command, vg: str) -> str:
    """A short form of one logged command: the tool and what it names or reports."""
    argv = command.argv
    if command.tool in ("lvs", "vgs", "pvs"):
        names = " ".join(a for a in argv[1:] if a.startswith(vg)) or "(all VGs)"
        if "--select" in argv:
            names += f" --select {argv[argv.index('--select') + 1]}"
        return f"{command.tool} {names}".replace(vg, "VG")
    if command.tool == "losetup":
        flags = [a for a in argv[1:] if a.startswith("--") and a not in ("--json", "--output")]
        return "losetup " + " ".join(flags[:2])
    if command.tool in LVM_TOOLS:
        target = argv[-1].replace(vg, "VG")
        return f"{command.tool} {target}"
    return command.tool


def sequences(profiles: Sequence[Profile], vg: str) -> List[str]:
    out = []
    for p in profiles:
        if not p.samples:
            continue
        sample = sorted(p.samples, key=len)[len(p.samples) // 2]
        steps = [f"{describe(c, vg)} ({c.seconds * 1000:.0f}{', answered before its exit' if c.answered else ''})"
                 for c in sample]
        out.append(f"{p.rpc} @ {p.level}: " + "; ".join(steps))
    return out
