"""tgtd's management socket: the requests ``tgtadm`` sends, without a ``tgtadm`` process per request.

The protocol, as tgt 1.0.85 defines it (usr/tgtadm.h, usr/tgtadm_error.h, usr/tgtadm.c, usr/mgmt.c):

* The socket is ``/var/run/tgtd/socket.N`` (``TGT_IPC_NAMESPACE`` + ``.`` + the control port, ``-C N``,
  0 for the system daemon); ``TGT_IPC_SOCKET`` in the environment replaces the part before ``.N``, as it
  does for tgtadm.  One connection per request; tgtd answers only its own uid and gid (root).
* A request is ``struct tgtadm_req`` in host byte order (120 bytes on x86_64 and aarch64: mode, op,
  lld[64], len, tid, sid, lun, cid, host_no, device_type, ac_dir, pack, force) followed by tgtadm's
  parameter string ("name=value,..." with a terminating NUL); ``len`` counts both.
* The answer is ``struct tgtadm_rsp`` (err, len) followed by ``len - 8`` bytes of text (a listing), NUL-ended.
  ``err`` is a ``tgtadm_errno``; tgtadm prints its text (:data:`ERRORS`) and exits 22.

The layout changes between tgt releases, so :func:`client_for` uses the socket only when ``tgtadm
--version`` names a release this layout was checked against (:data:`CHECKED_VERSIONS`: tests/iscsi
compares every request's bytes with what that release's tgtadm sends) and a harmless ``system show``
answers as tgt's does; otherwise the caller keeps running ``tgtadm``.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field, fields
from typing import List, Optional, Tuple

from .errors import CommandFailed, InvalidRequest
from .runner import REDACTED, run

log = logging.getLogger(__name__)

SOCKET_BASE = "/var/run/tgtd/socket"
SOCKET_ENV = "TGT_IPC_SOCKET"
CHECKED_VERSIONS = ("1.0.85",)
LLD = "iscsi"

MODES = {"system": 0, "target": 1, "logicalunit": 2, "portal": 3, "lld": 4, "session": 5, "conn": 6,
         "account": 7}
OPS = {"new": 0, "delete": 1, "show": 2, "bind": 3, "unbind": 4, "update": 5}
#: the text tgtadm prints for each tgtadm_errno, by value (usr/tgtadm.c's tgtadm_strerror table, whose order is
#: not the enum's: the values are those of tgtadm 1.0.85's own table, read from the Debian 12 binary)
ERRORS = (
    "success", "unknown error", "out of memory", "can't find the driver", "can't find the target",
    "can't find the logical unit", "can't find the session", "can't find the connection", "can't find the binding",
    "this target already exists", "this logical unit number already exists", "this binding already exists",
    "this access control rule already exists", "this access control rule does not exist",
    "this account already exists", "can't find the account", "too many accounts", "invalid request",
    "this target already has an outgoing account", "this target is still active",
    "this logical unit is still active", "this driver is busy", "this operation isn't supported",
    "unknown parameter", "this device has Prevent Removal set",
)
_UNKNOWN_ERRNO = "(unknown tgtadm_errno)"
_REQUEST = struct.Struct("=ii64sIiQQIIIIII")
_RESPONSE = struct.Struct("=II")
_NO_TID, _NO_LUN = -1, (1 << 64) - 1  # tgtadm's defaults when --tid / --lun are not given
_ACCOUNT_OUTGOING = 1
_MAX_PARAMS = 8 * 1024  # tgtd refuses a longer parameter string (MAX_MGT_BUFSIZE)


def message_of(code: int) -> str:
    return ERRORS[code] if 0 <= code < len(ERRORS) else _UNKNOWN_ERRNO


@dataclass(frozen=True)
class TgtRequest:
    """One tgtadm call (``--lld iscsi --mode MODE --op OP`` and the options below), in either form.

    :meth:`argv` is the tgtadm command line (options in one fixed order); :meth:`encode` is what that
    command line makes tgtadm send to tgtd.
    """

    mode: str
    op: str
    force: bool = False
    tid: Optional[int] = None
    sid: Optional[int] = None
    cid: Optional[int] = None
    lun: Optional[int] = None
    backing_store: Optional[str] = None
    bstype: Optional[str] = None
    params: Optional[str] = None
    targetname: Optional[str] = None
    initiator_address: Optional[str] = None
    initiator_name: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)  # a CHAP secret
    outgoing: bool = False

    def argv(self, *, redacted: bool = False) -> List[str]:
        """``--mode M --op O`` and the given options, each as ``--option value`` (a flag alone)."""
        out = ["--mode", self.mode, "--op", self.op]
        for item in fields(self)[2:]:
            value = getattr(self, item.name)
            option = "--" + item.name.replace("_", "-")
            if value is True:
                out.append(option)
            elif value is not None and value is not False:
                out += [option, REDACTED if redacted and item.name == "password" else str(value)]
        return out

    def secrets(self) -> Tuple[str, ...]:
        return (self.password,) if self.password else ()

    def _parameters(self) -> str:
        """tgtadm's parameter string: its pieces in tgtadm's order, ',' between them; ``--params`` last.

        tgtd splits the string at ',' (and reads it up to a NUL): a value holding either would be read as
        another parameter, so it is refused (the value itself is not named: it may be a secret)."""
        pieces = []
        for key, value in (("path", self.backing_store), ("bstype", self.bstype), ("targetname", self.targetname),
                           ("initiator-address", self.initiator_address), ("initiator-name", self.initiator_name),
                           ("user", self.user), ("password", self.password)):
            if value is not None:
                if "," in value or "\0" in value:
                    raise InvalidRequest(f"tgtd cannot take a {key} that holds ',' or NUL")
                pieces.append(f"{key}={value}")
        if self.params is not None:
            if "\0" in self.params:
                raise InvalidRequest("tgtd cannot take parameters that hold NUL")
            pieces.append(f"targetOps {self.params},")
        return ",".join(pieces)

    def encode(self) -> bytes:
        text = self._parameters()
        body = (text + "\0").encode() if text else b""
        if len(body) > _MAX_PARAMS:
            raise InvalidRequest(f"a tgtd request of {len(body)} bytes (tgtd takes at most {_MAX_PARAMS})")
        header = _REQUEST.pack(
            MODES[self.mode], OPS[self.op], LLD.encode(), _REQUEST.size + len(body),
            _NO_TID if self.tid is None else self.tid, self.sid or 0, _NO_LUN if self.lun is None else self.lun,
            self.cid or 0, 0, 0, _ACCOUNT_OUTGOING if self.outgoing else 0, 0, int(self.force))
        return header + body


class TgtdRefused(CommandFailed):
    """tgtd answered a request with an error: ``rc`` is its ``tgtadm_errno``, ``stderr`` the text tgtadm
    prints for it (never the request's parameters: they may hold a secret)."""

    def __init__(self, argv: List[str], code: int, what: Optional[str]) -> None:
        self.code = code
        super().__init__(argv, code, message_of(code), what)


class TgtdSocket:
    """Requests to one tgtd over its management socket (a connection each, as tgtadm makes)."""

    def __init__(self, control_port: Optional[int], timeout: float) -> None:
        self.path = f"{os.environ.get(SOCKET_ENV) or SOCKET_BASE}.{control_port or 0}"
        self.timeout = timeout

    def request(self, request: TgtRequest, what: Optional[str] = None) -> str:
        """Send *request*; return tgtd's text (a listing, or ""), raise :class:`TgtdRefused` on an error
        answer and :class:`~.errors.CommandFailed` (rc -1) when tgtd cannot be reached, times out or
        answers with something that is not a response."""
        shown = [self.path, *request.argv(redacted=True)]
        started = time.monotonic()
        try:
            code, text = self._exchange(request.encode())
        except socket.timeout:
            raise CommandFailed(shown, -1, f"timed out after {self.timeout:g}s", what) from None
        except (OSError, ValueError) as error:
            raise CommandFailed(shown, -1, f"tgtd: {error}", what) from None
        log.debug("sent %s err=%d in %.4fs", shown, code, time.monotonic() - started)  # 0.1 ms: most take less than 1
        if code != 0:
            raise TgtdRefused(shown, code, what)
        return text

    def _exchange(self, data: bytes) -> Tuple[int, str]:
        deadline = time.monotonic() + self.timeout  # for the whole request, as a tgtadm process has
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(data)
            head = _receive(sock, _RESPONSE.size, deadline)
            code, length = _RESPONSE.unpack(head)
            if length < _RESPONSE.size:
                raise ValueError(f"a response of length {length}")
            body = _receive(sock, length - _RESPONSE.size, deadline)
        return code, body.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _receive(sock: socket.socket, size: int, deadline: float) -> bytes:
    chunks, left = [], size
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout()
        sock.settimeout(remaining)
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            raise ValueError(f"closed the connection {left} bytes before the end of its response")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def looks_like_tgtd(listing: str) -> bool:
    """Whether *listing* is what tgt's ``--mode system --op show`` answers (the start of it)."""
    return listing.startswith("System:\n    State: ")


def client_for(control_port: Optional[int], timeout: float, tgtadm_version: str) -> Optional[TgtdSocket]:
    """A socket client when *tgtadm_version* is a checked release and tgtd answers a ``system show`` as tgt
    does; None when the layout is not known (the caller runs tgtadm).  Raises CommandFailed when tgtd
    cannot be reached (nothing decided: ask again at the next call)."""
    if tgtadm_version.strip() not in CHECKED_VERSIONS:
        log.debug("tgtadm %s: not a release whose socket layout is checked, tgtadm runs", tgtadm_version.strip())
        return None
    client = TgtdSocket(control_port, timeout)
    try:
        listing = client.request(TgtRequest("system", "show"), "ask tgtd")
    except TgtdRefused:
        return None
    if not looks_like_tgtd(listing):
        log.debug("%s answered system show unlike tgt %s, tgtadm runs", client.path, tgtadm_version.strip())
        return None
    return client


def socket_client(control_port: Optional[int], timeout: float) -> Optional[TgtdSocket]:
    """:func:`client_for` with the version the host's ``tgtadm --version`` reports."""
    return client_for(control_port, timeout, run(["tgtadm", "--version"], timeout=timeout,
                                                 what="ask tgtadm its version").stdout)
