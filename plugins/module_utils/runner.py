"""The one way the core runs external tools.

argv lists only (never a shell), a timeout on every call, ``LC_ALL=C`` so the
output we parse is stable, and secrets redacted from anything logged or raised.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence

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


def _redact(argv: Sequence[str], secrets: Iterable[str]) -> list:
    hidden = [s for s in secrets if s]
    out = []
    for arg in argv:
        for secret in hidden:
            arg = arg.replace(secret, REDACTED)
        out.append(arg)
    return out


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    env: Optional[Mapping[str, str]] = None,
    secrets: Iterable[str] = (),
    what: Optional[str] = None,
    stdin: Optional[str] = None,
) -> CommandResult:
    """Run *argv* and return its result; raise CommandFailed when *check* and rc != 0."""
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
        proc = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            check=False,
        )
    except FileNotFoundError:
        raise CommandFailed(shown, 127, f"{argv[0]}: command not found", what) from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(shown, -1, f"timed out after {timeout:g}s", what) from None
    stderr = " ".join(_redact([proc.stderr], secrets))
    log.debug("ran %s rc=%d in %.3fs", shown, proc.returncode, time.monotonic() - started)
    if check and proc.returncode != 0:
        raise CommandFailed(shown, proc.returncode, stderr, what)
    return CommandResult(shown, proc.returncode, proc.stdout, stderr)
