"""Checks every request field before anything is looked up (CSI size limits included)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Sequence, Tuple

import grpc

from basalt_core import filesystem
from basalt_core.errors import InvalidRequest
from basalt_core.model import MAX_NAME_BYTES, check_name
from basalt_core.mount import validate_options

from .errors import RpcFailure, invalid
from .proto import csi_pb2

MAX_STRING_BYTES = MAX_NAME_BYTES  # names and ids: CSI's limit for both
MAX_NODE_ID_BYTES = 256
MAX_MAP_BYTES = 4096  # maps and mount_flags
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255  # one path component (the kernel's NAME_MAX)
K8S_PREFIX = "csi.storage.k8s.io/"
EPHEMERAL_KEY = K8S_PREFIX + "ephemeral"
# Kept with the volume: they tell an operator which claim a volume serves.
K8S_KEPT = (K8S_PREFIX + "pvc/name", K8S_PREFIX + "pvc/namespace", K8S_PREFIX + "pv/name")

Mode = csi_pb2.VolumeCapability.AccessMode.Mode
SINGLE_NODE_MODES = {
    Mode.SINGLE_NODE_WRITER,
    Mode.SINGLE_NODE_READER_ONLY,
    Mode.SINGLE_NODE_SINGLE_WRITER,
    Mode.SINGLE_NODE_MULTI_WRITER,
}
READ_ONLY_MODES = {Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY}


def required_string(value: str, field: str, limit: int = MAX_STRING_BYTES) -> str:
    if not value:
        raise invalid(f"{field} is required")
    return bounded_string(value, field, limit)


def required_name(value: str, field: str = "name") -> str:
    """A CSI name, by the rule every face shares (model.check_name)."""
    return check_name(value, field)


def bounded_string(value: str, field: str, limit: int = MAX_STRING_BYTES) -> str:
    if len(value.encode("utf-8")) > limit:
        raise invalid(f"{field} is longer than {limit} bytes")
    if "\0" in value:
        raise invalid(f"{field} contains a NUL character")
    return value


def required_path(value: str, field: str) -> str:
    required_string(value, field, MAX_PATH_BYTES)
    if not os.path.isabs(value):
        raise invalid(f"{field} must be an absolute path, got {value!r}")
    if any(part in (".", "..") for part in value.split("/")):
        raise invalid(f"{field} {value!r} must not contain '.' or '..' components")
    if any(len(part.encode()) > MAX_COMPONENT_BYTES for part in value.split("/")):
        raise invalid(f"{field} has a component longer than {MAX_COMPONENT_BYTES} bytes (the kernel's NAME_MAX)")
    return os.path.normpath(value)


def without_symlinks(path: str, field: str) -> str:
    """Refuse a path through a symlink: a mount lands where the CO named, never where a link points."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return path  # the rest does not exist yet, so holds no link
        except NotADirectoryError:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             f"{field} {path!r} runs through a file that is not a directory") from None
        except OSError as error:  # e.g. EACCES on a component
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             f"{field} {path!r} cannot be examined at {current}: {error.strerror}") from None
        if stat.S_ISLNK(mode):
            raise invalid(f"{field} {path!r} runs through the symlink {current}: paths with symlinks are refused")
    return path


def bounded_map(values: Mapping[str, str], field: str) -> Mapping[str, str]:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
    if size > MAX_MAP_BYTES:
        raise invalid(f"{field} is larger than {MAX_MAP_BYTES} bytes")
    return values


def volume_parameters(parameters: Mapping[str, str], known: Iterable[str] = ()) -> dict:
    """Keep Basalt's own keys (none yet for the file pool) and the claim's identity.

    Other ``csi.storage.k8s.io/`` keys are the provisioner's and are ignored;
    anything else is a mistake in the StorageClass and is refused.
    """
    bounded_map(parameters, "parameters")
    allowed = set(known)
    kept = {key: value for key, value in parameters.items() if key in allowed or key in K8S_KEPT}
    unknown = sorted(key for key in parameters if key not in kept and not key.startswith(K8S_PREFIX))
    if unknown:
        raise invalid(f"unknown parameter(s) {', '.join(map(repr, unknown))}"
                      + (f" (known: {', '.join(sorted(allowed))})" if allowed else ""))
    return kept


@dataclass(frozen=True)
class Capability:
    block: bool
    fs_type: str  # canonical, "" for block
    mount_flags: Tuple[str, ...]
    mode: int

    @property
    def mode_name(self) -> str:
        return Mode.Name(self.mode)

    @property
    def read_only_mode(self) -> bool:
        return self.mode in READ_ONLY_MODES

    def same_use(self, other: "Capability") -> bool:
        return (self.block, self.fs_type, self.mode) == (other.block, other.fs_type, other.mode)


@dataclass(frozen=True)
class AccessPolicy:
    """Which access modes the agent can honour, and why not the others."""

    #: volumes are reachable from several nodes (exported over iSCSI)
    shared: bool

    def check(self, mode: int, block: bool) -> None:
        name = Mode.Name(mode)
        if mode in SINGLE_NODE_MODES:
            return
        if not self.shared:
            raise invalid(f"access mode {name} is not supported: volumes of this pool are local to one node "
                          "(export them over iSCSI to share them between nodes)")
        if mode == Mode.MULTI_NODE_READER_ONLY or (mode == Mode.MULTI_NODE_MULTI_WRITER and block):
            return
        if mode == Mode.MULTI_NODE_MULTI_WRITER:
            raise invalid(f"access mode {name} is supported for raw block volumes only: a filesystem mounted "
                          "read-write on several nodes at once would be corrupted")
        raise invalid(f"access mode {name} is not supported: readers on other nodes would see a filesystem "
                      "changing under them; use MULTI_NODE_READER_ONLY or raw block")


LOCAL = AccessPolicy(shared=False)
SHARED = AccessPolicy(shared=True)


def capability(cap: csi_pb2.VolumeCapability, field: str = "volume_capability",
               access: AccessPolicy = LOCAL) -> Capability:
    """Parse one capability; unsupported modes are refused with the reason."""
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise invalid(f"{field}.access_type must be block or mount")
    if not cap.HasField("access_mode") or cap.access_mode.mode == Mode.UNKNOWN:
        raise invalid(f"{field}.access_mode is required")
    mode = cap.access_mode.mode
    if mode not in Mode.values():
        raise invalid(f"{field}.access_mode {mode} is not a known mode")
    access.check(mode, kind == "block")
    if kind == "block":
        return Capability(True, "", (), mode)
    if cap.mount.volume_mount_group:
        raise invalid(f"{field}.mount.volume_mount_group is not supported")
    flags = list(cap.mount.mount_flags)
    if sum(len(f.encode()) for f in flags) > MAX_MAP_BYTES:
        raise invalid(f"{field}.mount.mount_flags are larger than {MAX_MAP_BYTES} bytes")
    try:
        fs_type = filesystem.check_type(cap.mount.fs_type)
        checked = validate_options(flags)
    except InvalidRequest as error:
        raise invalid(str(error)) from None
    return Capability(False, fs_type, tuple(checked), mode)


def required_capability(request: Any, access: AccessPolicy = LOCAL) -> Capability:
    """The request's ``volume_capability`` field, which must be set."""
    if not request.HasField("volume_capability"):
        raise invalid("volume_capability is required")
    return capability(request.volume_capability, access=access)


def capabilities(caps: Sequence[csi_pb2.VolumeCapability], field: str = "volume_capabilities",
                 access: AccessPolicy = LOCAL) -> List[Capability]:
    if not caps:
        raise invalid(f"{field} is required")
    return [capability(cap, f"{field}[{i}]", access) for i, cap in enumerate(caps)]


def non_negative_range(capacity: csi_pb2.CapacityRange) -> Tuple[int, int]:
    if capacity.required_bytes < 0 or capacity.limit_bytes < 0:
        raise invalid("capacity_range bytes must not be negative")
    return capacity.required_bytes, capacity.limit_bytes
