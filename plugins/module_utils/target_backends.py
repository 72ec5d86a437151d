"""The target backend a storage host exports with, built one way for the agent and the ``iscsi_export`` module."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .errors import InvalidRequest
from .iscsi_target import TargetBackend
from .model import DEFAULT_STATE_DIR
from .tgt_paths import DEFAULT_CONF, record_path_under

BACKENDS = ("tgt", "lio")


def open_target_backend(kind: str, *, base_iqn: str, portals: Sequence[str] = (), state_dir: str = DEFAULT_STATE_DIR,
                        tgt_control_port: Optional[int] = None, tgt_conf: str = DEFAULT_CONF,
                        tgt_record: Optional[str] = None, lio_save_file: Optional[str] = None,
                        rtslib: Any = None) -> TargetBackend:
    """*kind* ``tgt`` or ``lio``; the grant record (tgt) and the lock (both) live under *state_dir* unless told.

    The agent and the module share the defaults, so on one host they see the same grants and take
    the same lock. Only the backend named is imported: an agent that exports nothing loads neither.
    """
    if kind == "tgt":
        from .tgt import TgtBackend

        return TgtBackend(control_port=tgt_control_port, conf_path=tgt_conf,
                          record_path=tgt_record or record_path_under(state_dir), base_iqn=base_iqn)
    if kind == "lio":
        from .lio import LioBackend, lock_path_under

        return LioBackend(portals=portals, save_file=lio_save_file, lock_path=lock_path_under(state_dir),
                          rtslib=rtslib)
    raise InvalidRequest(f"iSCSI backend {kind!r} is not one of {', '.join(BACKENDS)}")
