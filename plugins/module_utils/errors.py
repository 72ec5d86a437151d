"""Typed failures of the storage core.

Callers translate them: the agent into gRPC status codes, the Ansible modules
into ``fail_json``.  Each names the object it is about.
"""

from __future__ import annotations

import traceback
from typing import Any, Dict, Optional, Sequence


class StorageError(Exception):
    """Base class of every failure the core reports."""

    #: True when the host had already changed before the failure stopped the operation
    changed = False


class InvalidRequest(StorageError):
    """A name, size or parameter is malformed or not supported."""


class NotFound(StorageError):
    """The volume, snapshot, device or node does not exist."""


class Conflict(StorageError):
    """An object of that name exists with incompatible properties."""


class AlreadyExists(Conflict):
    """A create refused because an object of that name exists (whatever its properties)."""


class InUse(StorageError):
    """The object is busy (published, mounted, attached) and cannot change."""


class Precondition(StorageError):
    """The system is not in a state that allows the operation."""


class OutOfRange(StorageError):
    """A size cannot be satisfied within the requested range."""


class NoSpace(StorageError):
    """The pool lacks the space for the request."""


class CommandFailed(StorageError):
    """An external tool exited non-zero, could not start, or timed out."""

    def __init__(self, argv: Sequence[str], rc: int, stderr: str, what: Optional[str] = None) -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stderr = stderr.strip()
        self.what = what
        prefix = f"{what}: " if what else ""
        tool = self.argv[0] if self.argv else "?"
        super().__init__(f"{prefix}{tool} failed (rc={rc}): {self.stderr or 'no error output'}")


def failure_details(what: str, error: BaseException) -> Dict[str, Any]:
    """Keyword arguments for Ansible's ``fail_json``: a message naming the object, whether the host
    changed before the failure, and the tool's rc, stderr and argv when a command failed (a traceback
    only for what the core did not expect)."""
    details: Dict[str, Any] = {"msg": f"{what}: {error}", "changed": getattr(error, "changed", False)}
    if isinstance(error, CommandFailed):
        details.update(rc=error.rc, stderr=error.stderr, cmd=error.argv)
    elif not isinstance(error, StorageError):
        details["exception"] = traceback.format_exc()
    return details
