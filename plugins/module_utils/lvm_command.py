"""How LVM's tools run (settings, one runner) and what their failures mean (typed errors).

Every LVM command goes through ``run_lvm``: argv list, ``LC_ALL=C`` (the
runner), stdin at EOF (any prompt is answered "n"), a timeout, and the
well-known failures classified into NotFound, Conflict, NoSpace, InUse or
Precondition; anything else stays a CommandFailed with LVM's rc and stderr.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, NoReturn, Optional, Sequence, Tuple, Type

from .errors import AlreadyExists, CommandFailed, InvalidRequest, NoSpace, NotFound, Precondition, StorageError
from .runner import Answer, CommandResult, run

REPORT_TIMEOUT = 60.0
CHANGE_TIMEOUT = 120.0
# Metadata-only changes on a few PVs take ~50 ms; a snapshot or thin LV also
# sends messages to the kernel pool, which can wait behind I/O.
REMOVE_TIMEOUT = 180.0
#: how much longer the runner waits than ``timeout`` does for the tool it runs (run_lvm's *vg_lock*)
KEEPER_MARGIN = 30.0

_DEVICE = re.compile(r"^/dev/[A-Za-z0-9_.+/-]+\Z")


@dataclass(frozen=True)
class LvmSettings:
    """How the LVM tools run: extra ``--config`` text and a private ``LVM_SYSTEM_DIR``.

    The default (nothing extra) is production: the host's /etc/lvm.  Tests and
    machines without device-mapper pass ``global{activation=0}`` and a device
    filter admitting only their own loop devices, so the host's VGs are never
    seen, let alone changed.
    """

    config: str = ""
    system_dir: Optional[str] = None

    def command(self, tool: str, *args: str) -> List[str]:
        argv = [tool]
        if self.config:
            argv += ["--config", self.config]
        argv += list(args)
        return argv

    def env(self) -> Dict[str, str]:
        # The agent may hold descriptors open; LVM warns about each on stderr.
        env = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
        if self.system_dir:
            env["LVM_SYSTEM_DIR"] = self.system_dir
        return env

    @classmethod
    def isolated(cls, devices: Sequence[str], system_dir: Optional[str] = None) -> "LvmSettings":
        """Settings that see only *devices*, never activate, and write no host state."""
        return cls(config=isolated_config(devices), system_dir=system_dir)


DEFAULT_SETTINGS = LvmSettings()


def isolated_config(devices: Sequence[str]) -> str:
    """lvm.conf text: activation off, only *devices* visible, no hints, backups or devices file."""
    accept = []
    for device in devices:
        if not _DEVICE.match(device):
            raise InvalidRequest(f"device {device!r} cannot go into an LVM filter")
        accept.append(f'"a|^{re.escape(device)}$|"')
    filters = ", ".join([*accept, '"r|.*|"'])
    return (
        "global { activation = 0 } "
        f'devices {{ filter = [ {filters} ] scan = [ "/dev" ] use_devicesfile = 0 '
        'obtain_device_list_from_udev = 0 hints = "none" } '
        "backup { backup = 0 archive = 0 }"
    )


# -- errors ----------------------------------------------------------------------

# Most specific first: the line that names what needed device-mapper.
_DM_MISSING: Tuple[Tuple["re.Pattern[str]", str], ...] = (
    (re.compile(r"Can't create (\S+) without using device-mapper kernel driver"), ""),
    (re.compile(r"(\S+): Required device-mapper target\(s\) not detected in your kernel"), ""),
    (re.compile(r"Cannot activate thin pool"), "thin-pool"),
    (re.compile(r"Failure to communicate with kernel device-mapper driver"), ""),
)
_DM_MODULES = {"thin-pool": "dm_thin_pool", "thin": "dm_thin_pool", "snapshot": "dm_snapshot"}
_KNOWN: Tuple[Tuple["re.Pattern[str]", Type[StorageError]], ...] = (
    (re.compile(r"already exists", re.I), AlreadyExists),
    (re.compile(r"insufficient free space|insufficient suitable (contiguous )?allocatable extents", re.I), NoSpace),
    # the VG's metadata area is full (measured at ~800 LVs with LVM's default 1 MiB area)
    (re.compile(r"exceeds maximum metadata size", re.I), NoSpace),
    (re.compile(r"Failed to find (logical|physical) volume|Volume group \"[^\"]*\" not found"
                r"|(Logical volume|Pool) \S+ not found in volume group", re.I), NotFound),
    (re.compile(r"existing signature left on the device"), Precondition),
)


def classify(error: CommandFailed) -> StorageError:
    """The typed error for a failed LVM command, or *error* itself when not a known case."""
    prefix = f"{error.what}: " if error.what else ""
    # Warnings ("Device for PV ... not found or rejected by a filter") are not the failure.
    text = "\n".join(line for line in error.stderr.splitlines() if not line.strip().startswith("WARNING:"))
    for pattern, feature in _DM_MISSING:
        dm = pattern.search(text)
        if dm:
            kind = feature or (dm.group(1) if pattern.groups else "")
            module = _DM_MODULES.get(kind, "dm_mod")
            needs = f" for {kind}" if kind else ""
            return Precondition(
                f"{prefix}the device-mapper kernel driver ({module}{needs}) is not available on this host: "
                f"{line_of(text, dm.group(0))}"
            )
    for pattern, kind_of_error in _KNOWN:
        match = pattern.search(text)
        if match:
            return kind_of_error(f"{prefix}{line_of(text, match.group(0))}")
    return error


def fail(result: CommandResult, what: str) -> NoReturn:
    failure = CommandFailed(result.argv, result.rc, result.stderr, what)
    mapped = classify(failure)
    if mapped is failure:
        raise failure
    raise mapped from failure


def line_of(text: str, fragment: str) -> str:
    for line in text.splitlines():
        if fragment in line:
            return line.strip()
    return fragment


def run_lvm(
    settings: LvmSettings,
    tool: str,
    args: Sequence[str],
    *,
    what: str,
    timeout: float,
    check: bool = True,
    vg_lock: Optional[int] = None,
    on_line: Optional[Callable[[str], None]] = None,
    answered: Optional[Answer] = None,
    ended: Optional[Callable[[], None]] = None,
) -> CommandResult:
    """Run an LVM tool; *vg_lock*: the descriptor on which the caller holds the VG's lock (lvm_lock), so the tool
    runs ``--nolocking`` under ``timeout``, which keeps that descriptor (LVM closes the ones it inherits) and so
    the lock for as long as the tool runs, the caller killed or not.  *on_line*: each stdout line as it comes;
    *answered*: set once the tool's work is done, before its exit; *ended*: called at its exit (``runner.run``)."""
    argv = settings.command(tool, *args)
    keep: Tuple[int, ...] = ()
    if vg_lock is not None:
        # timeout kills the tool itself (SIGKILL, as the runner would), well before the runner's own deadline
        # (which would kill timeout alone, leaving the tool running unlocked).
        argv = ["timeout", "--signal=KILL", f"{timeout:g}", *settings.command(tool, "--nolocking", *args)]
        keep, timeout = (vg_lock,), timeout + KEEPER_MARGIN
    try:
        # stdin at EOF: any prompt LVM still asks is answered "n".
        return run(argv, timeout=timeout, check=check, env=settings.env(), what=what, stdin="", pass_fds=keep,
                   on_line=on_line, answered=answered, ended=ended)
    except CommandFailed as exc:
        mapped = classify(exc)
        if mapped is exc:
            raise
        raise mapped from exc
