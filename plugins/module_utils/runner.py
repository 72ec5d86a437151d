"""The one way the core runs external tools.

argv lists only (never a shell), a timeout on every call, ``LC_ALL=C`` so the
output we parse is stable, and secrets redacted from anything logged or raised.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, cast

from .errors import CommandFailed, InvalidRequest

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
REDACTED = "********"


@dataclass(frozen=True)
class CommandResult:
    argv: Sequence[str]
    rc: int
    stdout: str
    stderr: str


def operand(value: str, what: str = "argument") -> str:
    """Return *value* if it is safe as a positional operand of a tool.

    Nothing that a tool could read as an option reaches a command line.
    """
    if not value or value.startswith("-") or "\0" in value:
        raise InvalidRequest(f"{what} {value!r} is not allowed on a command line")
    return value


class _Process(subprocess.Popen):
    """``Popen`` whose timed wait blocks on a pidfd until the exit.

    ``communicate(timeout=...)`` ends with ``wait(timeout)``, which polls ``waitpid`` with sleeps of 1 ms
    and more: a tool has closed its output a moment before it can be reaped, so that cost about 1 ms per
    command (2.1 against 1.3 ms for ``true`` here, interleaved), about half of a ``tgtadm`` call.  The timeout and its
    error are unchanged: the wait ends at the exit or at the same deadline.
    """

    def _wait(self, timeout: Optional[float]) -> int:
        if timeout is not None and self.returncode is None:
            with contextlib.suppress(OSError):  # no pidfd (old kernel): subprocess's own loop
                pidfd = os.pidfd_open(self.pid)
                try:
                    if not select.select([pidfd], [], [], max(timeout, 0))[0]:
                        timeout = 0  # the deadline passed: one last look, then TimeoutExpired
                finally:
                    os.close(pidfd)
        return super()._wait(timeout)  # type: ignore[misc]


def _redact(argv: Sequence[str], secrets: Iterable[str]) -> list:
    hidden = [s for s in secrets if s]
    out = []
    for arg in argv:
        for secret in hidden:
            arg = arg.replace(secret, REDACTED)
        out.append(arg)
    return out


def _follow(proc: subprocess.Popen, stdin: Optional[str], deadline: float,
            on_line: Callable[[str], None]) -> Tuple[str, str]:
    """``communicate`` that hands each stdout line to *on_line* as soon as it arrives (a small *stdin* only)."""
    if proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin or "")
        proc.stdin.close()
    if proc.stdout is None or proc.stderr is None:
        raise AssertionError("the process was started without its stdout and stderr pipes")
    stream = cast(io.TextIOWrapper, proc.stdout)  # text=True: decoded, newlines translated as Popen does

    def text(data: bytes) -> str:
        return data.decode(stream.encoding, stream.errors or "strict").replace("\r\n", "\n").replace("\r", "\n")
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    read: Dict[int, bytes] = {out: b"", err: b""}
    open_fds = [out, err]
    told = 0  # how much of stdout went to on_line
    while open_fds:
        left = deadline - time.monotonic()
        ready = select.select(open_fds, [], [], left)[0] if left > 0 else []
        if not ready:
            raise subprocess.TimeoutExpired(proc.args, deadline)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.remove(fd)
            read[fd] += chunk
        end = read[out].rfind(b"\n") + 1
        for line in text(read[out][told:end]).split("\n")[:-1]:
            on_line(line + "\n")
        told = max(told, end)
    proc.wait(max(deadline - time.monotonic(), 0))
    return text(read[out]), text(read[err])


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    env: Optional[Mapping[str, str]] = None,
    secrets: Iterable[str] = (),
    what: Optional[str] = None,
    stdin: Optional[str] = None,
    pass_fds: Sequence[int] = (),
    on_line: Optional[Callable[[str], None]] = None,
) -> CommandResult:
    """Run *argv* and return its result; raise CommandFailed when *check* and rc != 0.

    *pass_fds*: descriptors the command inherits (every other one is closed in it).
    *on_line*: called with each line of its stdout as soon as the tool writes it, while it still runs."""
    if isinstance(argv, str):
        raise TypeError("argv must be a list, never a shell string")
    secrets = list(secrets)
    shown = _redact(argv, secrets)
    full_env: Dict[str, str] = dict(os.environ)
    full_env.update({"LC_ALL": "C", "LANG": "C"})
    if env:
        full_env.update(env)
    started = time.monotonic()
    try:
        # subprocess.run(input=, capture_output=True, text=True, timeout=), with the wait above
        with _Process(list(argv), stdin=None if stdin is None else subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True, env=full_env, pass_fds=tuple(pass_fds)) as proc:
            try:
                if on_line is None:
                    stdout, stderr = proc.communicate(stdin, timeout=timeout)
                else:
                    stdout, stderr = _follow(proc, stdin, started + timeout, on_line)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
    except FileNotFoundError:
        raise CommandFailed(shown, 127, f"{argv[0]}: command not found", what) from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(shown, -1, f"timed out after {timeout:g}s", what) from None
    rc = proc.returncode
    stderr = " ".join(_redact([stderr], secrets))
    log.debug("ran %s rc=%d in %.3fs", shown, rc, time.monotonic() - started)
    if check and rc != 0:
        raise CommandFailed(shown, rc, stderr, what)
    return CommandResult(shown, rc, stdout, stderr)
