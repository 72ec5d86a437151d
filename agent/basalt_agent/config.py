"""Agent settings: command line over an optional TOML file over defaults."""

from __future__ import annotations

import argparse
import os
import socket
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from basalt_core import tgt_paths
from basalt_core.errors import InvalidRequest
from basalt_core.freeze import DEFAULT_LIMIT as DEFAULT_FREEZE_LIMIT
from basalt_core.iscsi_target import DEFAULT_BASE_IQN, check_iqn, initiator_iqn_for
from basalt_core.model import DEFAULT_STATE_DIR
from basalt_core.pool_spec import ACTIVATIONS, ALLOCATION_POLICIES, SETTINGS_FILE, SNAPSHOT_MODES, SPEC_FORMS
from basalt_core.pool_spec import DEFAULTS as POOL_DEFAULTS
from basalt_core.runner import operand
from basalt_core.sizes import parse_size

from . import DRIVER_NAME, __version__

SERVICES = ("identity", "controller", "node")
STORED = ("A pool made by the basalt.csi.pool module or the pool role stores its settings (VG tags, or "
          f"{SETTINGS_FILE} in a file pool's directory) and the agent uses those: a flag that says otherwise "
          "stops the agent with an error; a pool that stores none takes the flags.")
DEFAULT_ENDPOINT = "unix:///run/basalt/csi.sock"
DEFAULT_INITIATORNAME_FILE = "/etc/iscsi/initiatorname.iscsi"
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9822


@dataclass
class Config:
    endpoint: str = DEFAULT_ENDPOINT
    node_id: str = field(default_factory=socket.gethostname)
    pool: str = ""
    # The pool's settings: None means "not given" (the pool's stored value, else pool_spec.DEFAULTS).
    pool_capacity_limit: Optional[int] = None
    state_dir: str = DEFAULT_STATE_DIR
    services: List[str] = field(default_factory=lambda: list(SERVICES))
    workers: int = 16
    max_concurrent_rpcs: int = 64
    cleanup_grace: float = 600.0
    freeze_limit: float = DEFAULT_FREEZE_LIMIT
    default_volume_size: int = 1 << 30
    lvm_activation: Optional[str] = None
    lvm_alloc: Optional[str] = None
    lvm_snapshot_mode: Optional[str] = None
    lvm_cow_percent: Optional[int] = None
    thin_overprovision: Optional[float] = None
    thin_full_percent: Optional[float] = None
    iscsi_backend: str = ""
    iscsi_base_iqn: str = DEFAULT_BASE_IQN
    iscsi_portals: List[str] = field(default_factory=list)
    iscsi_initiators: Dict[str, str] = field(default_factory=dict)
    iscsi_require_chap: bool = True
    iscsi_initiator_base: str = ""
    iscsi_initiatorname_file: str = DEFAULT_INITIATORNAME_FILE
    iscsi_manage_initiatorname: bool = False
    tgt_control_port: int = 0
    tgt_conf: str = tgt_paths.DEFAULT_CONF
    registration_socket: str = ""
    kubelet_registration_path: str = ""
    log_level: str = "info"
    metrics_address: str = ""

    @property
    def socket_path(self) -> str:
        return endpoint_path(self.endpoint)

    @property
    def pool_spec(self) -> str:
        return self.pool or f"file:{os.path.join(self.state_dir, 'pools', 'file')}"


def endpoint_path(endpoint: str) -> str:
    if not endpoint.startswith("unix://"):
        raise InvalidRequest(f"endpoint {endpoint!r} must be unix:///absolute/path.sock")
    path = endpoint[len("unix://"):]
    if not os.path.isabs(path):
        raise InvalidRequest(f"endpoint {endpoint!r} must name an absolute socket path")
    return path


def metrics_address(text: str) -> Tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``[V6]:PORT``; a missing host is loopback, a missing port the default."""
    host, port = text, ""
    if text.startswith("["):
        host, _sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, _sep, port = text.partition(":")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise InvalidRequest(f"--metrics-address {text!r}: the port must be a number from 1 to 65535")
    return host or DEFAULT_METRICS_HOST, int(port) if port else DEFAULT_METRICS_PORT


def _services(text: str) -> List[str]:
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    if wanted == ["all"]:
        return list(SERVICES)
    unknown = [s for s in wanted if s not in SERVICES]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"services must be 'all' or a list of {', '.join(SERVICES)}")
    # Identity is always required by the spec and by every sidecar.
    return sorted(set(wanted) | {"identity"}, key=SERVICES.index)


def _initiator(text: str) -> "tuple[str, str]":
    node, sep, iqn = text.partition("=")
    if not sep or not node or not iqn:
        raise argparse.ArgumentTypeError(f"{text!r} is not NODE=IQN")
    return node, iqn


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidRequest as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="basalt-agent",
        description=f"Basalt CSI agent ({DRIVER_NAME}, version {__version__}): serves CSI v1.12 "
        "Identity, Controller and Node on a unix socket.",
        epilog="Settings come from the command line, then --config (TOML, same names with underscores), "
        "then defaults. With no settings at all the agent serves a file pool under "
        f"{DEFAULT_STATE_DIR}/pools/file on {DEFAULT_ENDPOINT}.",
    )
    add_settings(p)
    p.add_argument("--version", action="version", version=f"basalt-agent {__version__}")
    actions = p.add_mutually_exclusive_group()
    actions.add_argument("--check-config", action="store_true",
                         help="check the settings (the --config file included) and exit: 0 when they are valid, "
                         "2 with the reason otherwise; nothing is started or touched")
    actions.add_argument("--probe", action="store_true",
                         help="ask the agent serving these settings' endpoint whether it is ready (CSI Probe) and "
                         "exit: 0 when it answers ready, 1 otherwise")
    return p


def add_settings(p: argparse.ArgumentParser) -> None:
    """Every setting, for the agent and for the ``basalt`` command (same names, same defaults)."""
    p.add_argument("--config", help="TOML file with any of the settings below")
    p.add_argument("--endpoint", help=f"unix:///path.sock to serve (env CSI_ENDPOINT; default {DEFAULT_ENDPOINT})")
    p.add_argument("--node-id", help="this node's id (default: the host name)")
    p.add_argument("--pool", help=f"the pool: {SPEC_FORMS} (default: file:STATE_DIR/pools/file)")
    p.add_argument("--pool-capacity-limit", type=_size, help="cap on bytes provisioned from the pool, e.g. 100Gi "
                   "(default: no cap). " + STORED)
    p.add_argument("--state-dir", help=f"node state and default pool location (default {DEFAULT_STATE_DIR})")
    p.add_argument("--services", type=_services, help="all (default) or a comma list of identity,controller,node")
    p.add_argument("--workers", type=int, help="gRPC worker threads (default 16)")
    p.add_argument("--max-concurrent-rpcs", type=int, help="RPCs over this are refused (default 64)")
    p.add_argument("--cleanup-grace", type=float,
                   help="seconds before an unfinished, never retried creation is removed (default 600)")
    p.add_argument("--freeze-limit", type=float,
                   help="longest, in seconds, a mounted volume stays frozen while a snapshot or clone copies it; "
                        f"a slower copy fails and the volume is thawed (default {DEFAULT_FREEZE_LIMIT:g})")
    p.add_argument("--default-volume-size", type=_size, help="size when a request sets none (default 1Gi)")
    lvm = p.add_argument_group("LVM pools", "Each of these is a setting of the pool. " + STORED)
    lvm.add_argument("--lvm-activation", choices=ACTIVATIONS,
                     help="dm (default): lvchange; loop: a loop device at the LV's offset on its PV, for kernels "
                     "without device-mapper (linear, contiguous LVs only)")
    lvm.add_argument("--lvm-alloc", choices=ALLOCATION_POLICIES,
                     help=f"allocation policy of new LVs (default {POOL_DEFAULTS.alloc}; "
                     "loop activation needs contiguous)")
    lvm.add_argument("--lvm-snapshot-mode", choices=SNAPSHOT_MODES,
                     help="lvm pool snapshots: copy (independent) or cow (classic), default "
                     f"{POOL_DEFAULTS.snapshot_mode}; a snapshot class can choose "
                     "with the parameter basalt.dev/snapshot-mode")
    lvm.add_argument("--lvm-cow-percent", type=int, help="COW space of a classic snapshot, %% of its origin "
                     f"(default {POOL_DEFAULTS.cow_percent})")
    lvm.add_argument("--thin-overprovision", type=float,
                     help="lvmthin: virtual bytes allowed per byte of thin pool "
                     f"(default {POOL_DEFAULTS.overprovision})")
    lvm.add_argument("--thin-full-percent", type=float,
                     help="lvmthin: thin pool data/metadata use that marks volumes abnormal "
                     f"(default {POOL_DEFAULTS.full_percent})")
    iscsi = p.add_argument_group("iSCSI exports (storage hosts)")
    iscsi.add_argument("--iscsi-backend", choices=["tgt", "lio"],
                       help="export published volumes over iSCSI with this target (default: no exports, local "
                       "use). At start, in the background, the agent makes the target's exports under "
                       "--iscsi-base-iqn agree with the volumes' publication records (re-creates missing ones with "
                       "the saved CHAP, removes unwanted ones; other targets are never touched) and logs each action")
    iscsi.add_argument("--iscsi-base-iqn", help=f"targets are named BASE:<volume> (default {DEFAULT_BASE_IQN})")
    iscsi.add_argument("--iscsi-portal", dest="iscsi_portals", action="append", metavar="HOST:PORT",
                       help="a portal nodes log in to (repeat for several)")
    iscsi.add_argument("--iscsi-initiator-base", metavar="BASE",
                       help="derive every node's initiator IQN from its node id as BASE:<node id> (lower-cased, "
                       "other characters than a-z 0-9 . - replaced, a hash added when that changed it), e.g. "
                       f"{DEFAULT_BASE_IQN}.node: give the same BASE to the storage host and to every node. "
                       "The storage host then exports to any node id without a map (every node is known; "
                       "volumes carry no node topology), to that IQN only. A node agent's NodeGetInfo answers "
                       "FAILED_PRECONDITION, so kubelet's registration fails visibly, while "
                       "--iscsi-initiatorname-file names another IQN; --iscsi-manage-initiatorname writes it there")
    iscsi.add_argument("--iscsi-initiator", dest="iscsi_initiators", action="append", type=_initiator,
                       metavar="NODE=IQN", help="a node's initiator IQN (repeat; the roles write them to --config); "
                       "overrides the derived name for that node. Without --iscsi-initiator-base, a node that "
                       "is not listed is unknown (NOT_FOUND)")
    iscsi.add_argument("--iscsi-initiatorname-file", metavar="PATH",
                       help=f"open-iscsi's initiator name file on a node (default {DEFAULT_INITIATORNAME_FILE})")
    iscsi.add_argument("--iscsi-manage-initiatorname", action="store_true", default=None,
                       help="node: write InitiatorName=BASE:<node id> into --iscsi-initiatorname-file at start "
                       "when it says otherwise (atomically; restart iscsid afterwards if it was running, it reads "
                       "the file when it starts)")
    iscsi.add_argument("--iscsi-no-chap", dest="iscsi_require_chap", action="store_false", default=None,
                       help="allow exports without CHAP (ACL by initiator IQN only)")
    iscsi.add_argument("--tgt-control-port", type=int, help="tgtd's control port (-C), for private instances")
    iscsi.add_argument("--tgt-conf", help="where tgt's persistent config is written "
                       f"(default {tgt_paths.DEFAULT_CONF}); "
                       "it also carries the grant record (CHAP secrets, which tgtd never shows); the lock is "
                       f"{tgt_paths.record_path_under('STATE_DIR')}.lock")
    p.add_argument("--registration-socket",
                   help="also serve kubelet plugin registration on this socket "
                   f"(e.g. /var/lib/kubelet/plugins_registry/{DRIVER_NAME}-reg.sock)")
    p.add_argument("--kubelet-registration-path",
                   help="the CSI socket's path as kubelet sees it (default: the endpoint's path)")
    p.add_argument("--metrics-address", nargs="?", const=f"{DEFAULT_METRICS_HOST}:{DEFAULT_METRICS_PORT}",
                   metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics and the livenessprobe contract on "
                   "/healthz (200 when Probe says ready, 500 with the reason). Off by default; alone: "
                   f"{DEFAULT_METRICS_HOST}:{DEFAULT_METRICS_PORT}; a missing host is {DEFAULT_METRICS_HOST}, a "
                   f"missing port {DEFAULT_METRICS_PORT}. Plain HTTP: give a pod or loopback address")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")


def load(argv: Optional[Sequence[str]] = None, environ: Optional[Dict[str, str]] = None) -> Config:
    return from_args(parser().parse_args(argv), environ)


def from_args(args: argparse.Namespace, environ: Optional[Dict[str, str]] = None) -> Config:
    """The settings parsed by :func:`add_settings`, over --config, CSI_ENDPOINT and the defaults."""
    environ = dict(os.environ if environ is None else environ)
    settings: Dict[str, Any] = {}
    if args.config:
        import tomllib  # only a --config file needs it: not held by every agent

        try:
            with open(args.config, "rb") as handle:
                document = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise InvalidRequest(f"--config {args.config}: {error}") from None
        settings.update(_from_file(document, args.config))
    if environ.get("CSI_ENDPOINT") and not args.endpoint:
        settings["endpoint"] = environ["CSI_ENDPOINT"]
    for item in fields(Config):
        value = getattr(args, item.name, None)
        if value is not None and item.name != "iscsi_initiators":
            settings[item.name] = value
    if args.iscsi_initiators:  # NODE=IQN pairs add to (and override) those of the file
        settings["iscsi_initiators"] = {**settings.get("iscsi_initiators", {}), **dict(args.iscsi_initiators)}
    config = Config(**settings)
    endpoint_path(config.endpoint)
    if config.metrics_address:
        metrics_address(config.metrics_address)
    _check_iscsi(config)
    return config


def _check_iscsi(config: Config) -> None:
    """Initiator settings fail at start, with the setting's name, rather than at the first publish."""
    for node, iqn in config.iscsi_initiators.items():
        operand(node, "--iscsi-initiator node id")
        check_iqn(iqn, f"initiator IQN of node {node!r}")
    if config.iscsi_initiator_base:
        initiator_iqn_for(config.iscsi_initiator_base, config.node_id)
    if not os.path.isabs(config.iscsi_initiatorname_file):
        raise InvalidRequest(f"--iscsi-initiatorname-file {config.iscsi_initiatorname_file!r} must be absolute")
    if config.iscsi_manage_initiatorname and not config.iscsi_initiator_base:
        raise InvalidRequest("--iscsi-manage-initiatorname needs --iscsi-initiator-base (the name to write)")


#: agent setting -> the pool setting it gives (pool_spec.PoolSettings)
POOL_SETTINGS = {
    "pool_capacity_limit": "capacity_limit",
    "lvm_activation": "activation",
    "lvm_alloc": "alloc",
    "lvm_snapshot_mode": "snapshot_mode",
    "lvm_cow_percent": "cow_percent",
    "thin_overprovision": "overprovision",
    "thin_full_percent": "full_percent",
}


def given_pool_settings(config: Config) -> Dict[str, Any]:
    """The pool settings this agent was given (flags or file); the pool's stored ones must agree."""
    return {key: getattr(config, name) for name, key in POOL_SETTINGS.items() if getattr(config, name) is not None}


def pool_setting_labels() -> Dict[str, str]:
    """Pool setting -> the flag that gives it, for messages."""
    return {key: "--" + name.replace("_", "-") for name, key in POOL_SETTINGS.items()}


def _from_file(document: Dict[str, Any], path: str) -> Dict[str, Any]:
    names = {f.name for f in fields(Config)}
    unknown = sorted(set(document) - names)
    if unknown:
        raise InvalidRequest(f"{path}: unknown settings {', '.join(unknown)}")
    settings = dict(document)
    for key in ("pool_capacity_limit", "default_volume_size"):
        if isinstance(settings.get(key), str):
            settings[key] = parse_size(settings[key])
    if isinstance(settings.get("services"), str):
        settings["services"] = _services(settings["services"])
    hints = typing.get_type_hints(Config)
    for key, value in settings.items():
        if not _has_type(value, hints[key]):
            raise InvalidRequest(f"{path}: {key} = {value!r} is not of type {_type_name(hints[key])}")
    return settings


def _has_type(value: Any, wanted: Any) -> bool:
    """Whether a TOML value fits a Config field's type (TOML's integers are floats' too, never booleans)."""
    origin, args = typing.get_origin(wanted), typing.get_args(wanted)
    if origin is typing.Union:  # Optional[X]: TOML has no null, so X
        return any(_has_type(value, arg) for arg in args if arg is not type(None))
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_has_type(k, args[0]) and _has_type(v, args[1])
                                               for k, v in value.items())
    if wanted is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if wanted is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, wanted)


def _type_name(wanted: Any) -> str:
    origin = typing.get_origin(wanted)
    if origin is typing.Union:
        return " or ".join(_type_name(arg) for arg in typing.get_args(wanted) if arg is not type(None))
    return f"{origin.__name__} of {', '.join(_type_name(a) for a in typing.get_args(wanted))}" if origin \
        else wanted.__name__
