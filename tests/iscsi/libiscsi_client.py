"""A userspace iSCSI initiator for tests: libiscsi.so.7 (libiscsi 1.19) through ctypes.

The kernel initiator cannot log in on the development and CI machines (no
NETLINK_ISCSI), so the real target tests log in, read and write with libiscsi
in-process instead.  Every context gets ``iscsi_set_timeout`` so that a wrong
port or a hung target fails the test instead of hanging it.

Only functions whose signatures are stable across libiscsi 1.x are used, and
no struct layout is read except the first three fields of ``struct scsi_sense``
(error_type, key, ascq), filled by ``scsi_task_get_status``; data are read into
our own buffer with ``iscsi_read16_iov_sync`` rather than from ``task->datain``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import Any, Optional

ISCSI_SESSION_NORMAL = 2
ISCSI_HEADER_DIGEST_NONE = 0
SCSI_STATUS_GOOD = 0
SCSI_STATUS_CHECK_CONDITION = 2
SENSE_KEY_DATA_PROTECTION = 0x07
ASCQ_WRITE_PROTECTED = 0x2700

_LIB: Optional[ctypes.CDLL] = None


class IscsiError(Exception):
    """libiscsi reported an error (login refused, connection failed, timeout)."""


class _ScsiIovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def library_name() -> Optional[str]:
    """The libiscsi shared library to load, or None when it is not installed."""
    for candidate in ("libiscsi.so.7", ctypes.util.find_library("iscsi")):
        if not candidate:
            continue
        try:
            ctypes.CDLL(candidate)
        except OSError:
            continue
        return candidate
    return None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is not None:
        return _LIB
    name = library_name()
    if name is None:
        raise IscsiError("libiscsi.so.7 not found (Debian package libiscsi7)")
    lib = ctypes.CDLL(name)
    vp, cp, ci, u64, u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint32
    signatures: "dict[str, tuple[Any, list[Any]]]" = {
        "iscsi_create_context": (vp, [cp]),
        "iscsi_destroy_context": (ci, [vp]),
        "iscsi_get_error": (cp, [vp]),
        "iscsi_set_targetname": (ci, [vp, cp]),
        "iscsi_set_session_type": (ci, [vp, ci]),
        "iscsi_set_header_digest": (ci, [vp, ci]),
        "iscsi_set_initiator_username_pwd": (ci, [vp, cp, cp]),
        "iscsi_set_target_username_pwd": (ci, [vp, cp, cp]),
        "iscsi_set_timeout": (ci, [vp, ci]),
        "iscsi_set_noautoreconnect": (None, [vp, ci]),
        "iscsi_full_connect_sync": (ci, [vp, cp, ci]),
        "iscsi_logout_sync": (ci, [vp]),
        "iscsi_disconnect": (ci, [vp]),
        "iscsi_write16_sync": (vp, [vp, ci, u64, cp, u32, ci, ci, ci, ci, ci, ci]),
        "iscsi_read16_iov_sync": (vp, [vp, ci, u64, u32, ci, ci, ci, ci, ci, ci, ctypes.POINTER(_ScsiIovec), ci]),
        "scsi_task_get_status": (ci, [vp, vp]),
        "scsi_free_scsi_task": (None, [vp]),
    }
    for name_, (restype, argtypes) in signatures.items():
        func = getattr(lib, name_)
        func.restype = restype
        func.argtypes = argtypes
    _LIB = lib
    return lib


@dataclass(frozen=True)
class ScsiResult:
    """Outcome of one SCSI command: status byte and, on CHECK CONDITION, the sense key and ASC/ASCQ."""

    status: int
    sense_key: int = 0
    ascq: int = 0
    data: bytes = b""

    @property
    def good(self) -> bool:
        return self.status == SCSI_STATUS_GOOD


class Session:
    """One logged-in iSCSI session to one LUN; use as a context manager."""

    def __init__(
        self,
        portal: str,
        target_iqn: str,
        initiator_iqn: str,
        *,
        lun: int = 1,
        user: Optional[str] = None,
        password: Optional[str] = None,
        mutual_user: Optional[str] = None,
        mutual_password: Optional[str] = None,
        timeout: int = 5,
        block_size: int = 512,
    ) -> None:
        self.lun = lun
        self.block_size = block_size
        lib = _lib()
        self._lib = lib
        ctx = lib.iscsi_create_context(initiator_iqn.encode())
        if not ctx:
            raise IscsiError("iscsi_create_context failed")
        self._ctx: Optional[int] = ctx
        try:
            lib.iscsi_set_timeout(ctx, timeout)
            lib.iscsi_set_noautoreconnect(ctx, 1)
            lib.iscsi_set_targetname(ctx, target_iqn.encode())
            lib.iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL)
            lib.iscsi_set_header_digest(ctx, ISCSI_HEADER_DIGEST_NONE)
            if user is not None:
                lib.iscsi_set_initiator_username_pwd(ctx, user.encode(), (password or "").encode())
            if mutual_user is not None:
                lib.iscsi_set_target_username_pwd(ctx, mutual_user.encode(), (mutual_password or "").encode())
            if lib.iscsi_full_connect_sync(ctx, portal.encode(), lun) != 0:
                raise IscsiError(self.error())
        except BaseException:
            self.close(logout=False)
            raise

    def error(self) -> str:
        if not self._ctx:
            return "no context"
        message = self._lib.iscsi_get_error(self._ctx)
        return message.decode(errors="replace") if message else "unknown libiscsi error"

    def _finish(self, task: Optional[int], data: bytes = b"") -> ScsiResult:
        if not task:
            raise IscsiError(self.error())
        sense = ctypes.create_string_buffer(64)
        try:
            status = self._lib.scsi_task_get_status(task, sense)
            key = int.from_bytes(sense.raw[4:8], "little")
            ascq = int.from_bytes(sense.raw[8:12], "little")
        finally:
            self._lib.scsi_free_scsi_task(task)
        if status != SCSI_STATUS_CHECK_CONDITION:
            key, ascq = 0, 0
        return ScsiResult(status, key, ascq, data if status == SCSI_STATUS_GOOD else b"")

    def write(self, lba: int, data: bytes) -> ScsiResult:
        """WRITE(16) *data* (a whole number of blocks) at *lba*; FUA so it reaches the backing store."""
        if len(data) % self.block_size:
            raise ValueError("data must be a whole number of blocks")
        task = self._lib.iscsi_write16_sync(self._ctx, self.lun, lba, data, len(data), self.block_size,
                                            0, 0, 1, 0, 0)
        return self._finish(task)

    def read(self, lba: int, length: int) -> ScsiResult:
        """READ(16) *length* bytes (whole blocks) at *lba* into our own buffer."""
        buffer = ctypes.create_string_buffer(length)
        iov = _ScsiIovec(ctypes.cast(buffer, ctypes.c_void_p), length)
        task = self._lib.iscsi_read16_iov_sync(self._ctx, self.lun, lba, length, self.block_size,
                                               0, 0, 0, 0, 0, ctypes.byref(iov), 1)
        return self._finish(task, buffer.raw[:length])

    def close(self, logout: bool = True) -> None:
        ctx, self._ctx = self._ctx, None
        if not ctx:
            return
        if logout:
            self._lib.iscsi_logout_sync(ctx)
        self._lib.iscsi_destroy_context(ctx)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
