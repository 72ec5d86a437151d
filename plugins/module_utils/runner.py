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
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Set, Tuple, Type, cast

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
    """``Popen`` whose timed wait blocks on a pidfd until the exit, and which can outlive its ``with`` block.

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

    handed_over = False  # its exit is awaited elsewhere (_linger): leaving ``with`` neither closes nor waits

    def __exit__(self, kind: Optional[Type[BaseException]], value: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        if not self.handed_over:
            super().__exit__(kind, value, trace)


def _hidden(text: str, secrets: Iterable[str]) -> str:
    """*text* (a tool's stderr) with every secret replaced."""
    return _redact([text], secrets)[0]


def _redact(argv: Sequence[str], secrets: Iterable[str]) -> list:
    hidden = [s for s in secrets if s]
    out = []
    for arg in argv:
        for secret in hidden:
            arg = arg.replace(secret, REDACTED)
        out.append(arg)
    return out


class _Output:
    """A running tool's stdout and stderr, read as they come (``communicate`` that can stop and go on)."""

    def __init__(self, proc: subprocess.Popen, stdin: Optional[str]) -> None:
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin or "")
            proc.stdin.close()
        if proc.stdout is None or proc.stderr is None:
            raise AssertionError("the process was started without its stdout and stderr pipes")
        self.stream = cast(io.TextIOWrapper, proc.stdout)  # text=True: decoded, newlines translated as Popen does
        self.out, self.err = proc.stdout.fileno(), proc.stderr.fileno()
        self.read: Dict[int, bytes] = {self.out: b"", self.err: b""}
        self.open_fds = [self.out, self.err]
        self.told = 0  # how much of stdout went to on_line

    def text(self, data: bytes) -> str:
        stream = self.stream
        return data.decode(stream.encoding, stream.errors or "strict").replace("\r\n", "\n").replace("\r", "\n")

    def pump(self, args: object, deadline: float, on_line: Optional[Callable[[str], None]],
             answered: Optional["Answer"] = None) -> bool:
        """Read until both pipes are closed (True), or until *answered* is said (False); each whole stdout line
        to *on_line* as it comes.  TimeoutExpired at *deadline*."""
        woken = [] if answered is None else [answered.fileno()]
        while self.open_fds:
            if answered is not None and answered.is_set():
                return False
            left = deadline - time.monotonic()
            ready = select.select(self.open_fds + woken, [], [], left)[0] if left > 0 else []
            if not ready:
                raise subprocess.TimeoutExpired(args, deadline)  # type: ignore[arg-type]
            for fd in ready:
                if fd in woken:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.open_fds.remove(fd)
                self.read[fd] += chunk
            end = self.read[self.out].rfind(b"\n") + 1
            if on_line is not None:
                for line in self.text(self.read[self.out][self.told:end]).split("\n")[:-1]:
                    on_line(line + "\n")
            self.told = max(self.told, end)
        return True

    def result(self) -> Tuple[str, str]:
        return self.text(self.read[self.out]), self.text(self.read[self.err])


class Answer:
    """Said (``set``) by whoever knows that a running tool's work is done, from ``run``'s *on_line* or from any
    thread: ``run`` watches it beside the tool's output (a pipe), so it returns at once, without polling.
    Close it (``with``) once ``run`` has returned; a ``set`` after that does nothing."""

    def __init__(self) -> None:
        self._said = threading.Event()
        self._guard = threading.Lock()
        self._read, self._write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._open = True

    def set(self) -> None:
        with self._guard:
            self._said.set()
            if self._open:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._write, b"!")

    def is_set(self) -> bool:
        return self._said.is_set()

    def fileno(self) -> int:
        return self._read

    def close(self) -> None:
        with self._guard:
            if self._open:
                self._open = False
                os.close(self._read)
                os.close(self._write)

    def __enter__(self) -> "Answer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_lingering: Set[threading.Thread] = set()
_lingering_guard = threading.Lock()


def settle(timeout: Optional[float] = None) -> bool:
    """Wait for the tools ``run`` returned from before their exit (*answered*) to end; whether none is left."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _lingering_guard:
            left = next(iter(_lingering), None)
        if left is None:
            return True
        left.join(None if deadline is None else max(deadline - time.monotonic(), 0))
        if left.is_alive():
            return False


def _linger(proc: "_Process", output: _Output, shown: Sequence[str], secrets: Sequence[str], started: float,
            deadline: float, what: Optional[str], ended: Optional[Callable[[], None]]) -> None:
    """Await the exit of a tool whose caller already has its answer: logged as any command is, and a failure
    after that answer as a warning (its work was done by then); then *ended*."""
    def finish() -> None:
        try:
            try:
                output.pump(proc.args, deadline, None)
                proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stderr = _hidden(output.result()[1], secrets).strip()
            log.debug("ended %s rc=%d in %.3fs", shown, proc.returncode, time.monotonic() - started)
            if proc.returncode != 0:
                log.warning("%s: %s ended with rc=%d after its work was done: %s", what or shown[0], shown[0],
                            proc.returncode, stderr)
        finally:
            subprocess.Popen.__exit__(proc, None, None, None)  # its pipes closed, the process reaped
            try:
                if ended is not None:
                    ended()
            finally:
                with _lingering_guard:
                    _lingering.discard(thread)
    thread = threading.Thread(target=finish, name=f"after {os.path.basename(shown[0])}", daemon=True)
    with _lingering_guard:  # (so that settle never joins it unstarted)
        _lingering.add(thread)
        thread.start()


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
    answered: Optional[Answer] = None,
    ended: Optional[Callable[[], None]] = None,
) -> CommandResult:
    """Run *argv* and return its result; raise CommandFailed when *check* and rc != 0.

    *pass_fds*: descriptors the command inherits (every other one is closed in it).
    *on_line*: called with each line of its stdout as soon as the tool writes it, while it still runs.
    *answered*: said by the caller (from *on_line* or another thread) once the tool's work is done while it
    still runs (LVM tearing down after its commit): ``run`` returns at once, rc 0 and the output so far; the
    exit is awaited in the background (``settle``), logged, and a failure after that logged as a warning.
    *ended*: called once the tool has exited and was reaped, whether ``run`` returned before that or not (from
    the background then; whatever ``run`` returns or raises otherwise)."""
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
                if on_line is None and answered is None:
                    stdout, stderr = proc.communicate(stdin, timeout=timeout)
                else:
                    output = _Output(proc, stdin)
                    if not output.pump(proc.args, started + timeout, on_line, answered):
                        stdout, stderr = output.result()
                        log.debug("ran %s answered in %.3fs", shown, time.monotonic() - started)
                        proc.handed_over = True
                        _linger(proc, output, shown, secrets, started, started + timeout, what, ended)
                        ended = None  # (the background's now)
                        return CommandResult(shown, 0, stdout, _hidden(stderr, secrets))
                    stdout, stderr = output.result()
                    proc.wait(max(started + timeout - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
    except FileNotFoundError:
        raise CommandFailed(shown, 127, f"{argv[0]}: command not found", what) from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(shown, -1, f"timed out after {timeout:g}s", what) from None
    finally:
        if ended is not None:
            ended()
    rc = proc.returncode
    stderr = _hidden(stderr, secrets)
    log.debug("ran %s rc=%d in %.3fs", shown, rc, time.monotonic() - started)
    if check and rc != 0:
        raise CommandFailed(shown, rc, stderr, what)
    return CommandResult(shown, rc, stdout, stderr)
