"""A fake rtslib_fb for basalt_core.lio's unit tests (LIO cannot run on the development and CI machines: no
configfs; the VM tier runs the real one).  It mirrors rtslib-fb's API; test_lio.py's
``test_fake_matches_real_rtslib`` checks what lio uses of it against the real package."""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Counter, Dict, List, Optional, Set, Tuple

from basalt_core import lio
from basalt_core.iscsi_target import Chap

T = "iqn.2026-11.io.basalt:pvc-5b1fd0c2"
A = "iqn.2026-11.io.example:node-a"
B = "iqn.2026-11.io.example:node-b"
SERIAL = "5b1fd0c2a1b2c3d4"
CHAP_A = Chap("node-a", "secret-a-0123456", "target-1", "secret-t-6543210")


@dataclass
class ApiUse:
    """What basalt_core.lio used of the (fake) rtslib_fb: calls with their arguments, attributes read and set."""

    calls: List[Tuple[str, str, Tuple[Any, ...], Dict[str, Any]]] = field(default_factory=list)
    reads: Counter[Tuple[str, str]] = field(default_factory=Counter)
    writes: Set[Tuple[str, str]] = field(default_factory=set)


RECORDING: List[ApiUse] = []  # the active recorder, if any


def _by_lio() -> bool:
    """Whether the access being recorded comes from basalt_core.lio itself (not from the fake or the test)."""
    return sys._getframe(2).f_globals.get("__name__") == lio.__name__


class Recorded:
    """Base of the fake objects: attribute sets after construction are logged; lio's uses are recorded."""

    _log: List[Tuple[Any, ...]]
    _ready = False

    def __setattr__(self, name: str, value: Any) -> None:
        if RECORDING and not name.startswith("_") and _by_lio():
            RECORDING[0].writes.add((type(self).__name__, name))
        if self._ready and not name.startswith("_"):
            self._log.append(("set", repr(self), name, value))
        object.__setattr__(self, name, value)

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if RECORDING and not name.startswith("_") and _by_lio():
            owner = type(self).__name__
            if inspect.ismethod(value):
                def call(*args: Any, **kwargs: Any) -> Any:
                    RECORDING[0].calls.append((owner, name, args, kwargs))
                    return value(*args, **kwargs)
                return call
            RECORDING[0].reads[(owner, name)] += 1
        return value


class FakeModule(SimpleNamespace):
    """The fake rtslib_fb module: lio's constructor calls are recorded with their arguments."""

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if RECORDING and isinstance(value, type) and not issubclass(value, BaseException) and _by_lio():
            def construct(*args: Any, **kwargs: Any) -> Any:
                RECORDING[0].calls.append((name, "", args, kwargs))
                return value(*args, **kwargs)
            return construct
        return value


def make_fake() -> SimpleNamespace:
    """A stand-in for the rtslib_fb module with its own state and call log."""
    log: List[Tuple[Any, ...]] = []
    state: Dict[str, List[Any]] = {"targets": [], "storage": []}

    class RTSLibNotInCFSError(Exception):
        """rtslib's lookup miss (2.2's name; 2.1 calls it RTSLibNotInCFS)."""

    def looked_up(found: List[Any], match: Any, what: str) -> Any:
        """A lookup-mode constructor: the existing object at that path, or rtslib's miss."""
        for candidate in found:
            if match(candidate):
                return candidate
        raise RTSLibNotInCFSError(f"No such {what} in configfs")

    class FabricModule(Recorded):
        def __new__(cls, name: str) -> Any:  # rtslib: FabricModule(name) returns the registered module
            assert name == "iscsi"
            module = object.__new__(cls)
            module.targets = list(state["targets"])
            return module

    class BlockStorageObject(Recorded):
        plugin = "block"

        def __init__(self, name: str, dev: Optional[str] = None, wwn: Optional[str] = None, readonly: bool = False,
                     write_back: bool = False, index: Optional[int] = None) -> None:
            assert dev is not None, "lookup mode is not used by LioBackend"
            self._log = log
            self.name, self.udev_path, self.wwn, self.readonly = name, dev, wwn, readonly
            log.append(("BlockStorageObject", name, dev, wwn, readonly))
            state["storage"].append(self)
            self._ready = True

        def delete(self, save: bool = False) -> None:
            log.append(("delete", repr(self)))
            state["storage"].remove(self)

        def __repr__(self) -> str:
            return f"<so {self.name}>"

    class Target(Recorded):
        def __new__(cls, fabric_module: Any, wwn: Optional[str] = None, mode: str = "any") -> Any:
            if mode == "lookup":
                return looked_up(state["targets"], lambda t: t.wwn == wwn, "Target")
            return object.__new__(cls)

        def __init__(self, fabric_module: Any, wwn: Optional[str] = None, mode: str = "any") -> None:
            if mode == "lookup":
                return
            self._log = log
            self.wwn = wwn
            self.tpgs: List[Any] = []
            log.append(("Target", wwn, mode))
            state["targets"].append(self)
            self._ready = True

        def delete(self) -> None:
            log.append(("delete", repr(self)))
            state["targets"].remove(self)

        def __repr__(self) -> str:
            return f"<target {self.wwn}>"

    class TPG(Recorded):
        def __new__(cls, parent_target: Any, tag: Optional[int] = None, mode: str = "any") -> Any:
            if mode == "lookup":
                return looked_up(parent_target.tpgs, lambda t: t.tag == tag, "TPG")
            return object.__new__(cls)

        def __init__(self, parent_target: Any, tag: Optional[int] = None, mode: str = "any") -> None:
            if mode == "lookup":
                return
            self._log = log
            self.parent_target, self.tag = parent_target, tag
            self.enable = False
            self.luns: List[Any] = []
            self.node_acls: List[Any] = []
            self.network_portals: List[Any] = []
            self._attributes = {"generate_node_acls": "0", "authentication": "1", "demo_mode_write_protect": "1"}
            parent_target.tpgs.append(self)
            log.append(("TPG", parent_target.wwn, tag, mode))
            self._ready = True

        def set_attribute(self, attribute: str, value: str) -> None:
            log.append(("set_attribute", repr(self), attribute, value))
            self._attributes[attribute] = value

        def get_attribute(self, attribute: str) -> str:
            return self._attributes[attribute]

        def __repr__(self) -> str:
            return f"<tpg {self.parent_target.wwn}/{self.tag}>"

    class NetworkPortal(Recorded):
        def __init__(self, parent_tpg: Any, ip_address: str, port: int = 3260, mode: str = "any") -> None:
            self.ip_address, self.port = ip_address, port
            parent_tpg.network_portals.append(self)
            log.append(("NetworkPortal", repr(parent_tpg), ip_address, port, mode))

    class LUN(Recorded):
        def __new__(cls, parent_tpg: Any, lun: Optional[int] = None, storage_object: Any = None,
                    alias: Optional[str] = None) -> Any:
            if storage_object is None:
                return looked_up(parent_tpg.luns, lambda found: found.lun == lun, "LUN")
            return object.__new__(cls)

        def __init__(self, parent_tpg: Any, lun: Optional[int] = None, storage_object: Any = None,
                     alias: Optional[str] = None) -> None:
            if storage_object is None:
                return
            self.lun, self.storage_object = lun, storage_object
            parent_tpg.luns.append(self)
            log.append(("LUN", repr(parent_tpg), lun, repr(storage_object)))

    class NodeACL(Recorded):
        def __new__(cls, parent_tpg: Any, node_wwn: str, mode: str = "any") -> Any:
            if mode == "lookup":
                return looked_up(parent_tpg.node_acls, lambda acl: acl.node_wwn == node_wwn, "NodeACL")
            return object.__new__(cls)

        def __init__(self, parent_tpg: Any, node_wwn: str, mode: str = "any") -> None:
            if mode == "lookup":
                return
            self._log = log
            self._tpg = parent_tpg
            self.node_wwn = node_wwn
            self.chap_userid = self.chap_password = self.chap_mutual_userid = self.chap_mutual_password = ""
            self.mapped_luns: List[Any] = []
            parent_tpg.node_acls.append(self)
            log.append(("NodeACL", repr(parent_tpg), node_wwn, mode))
            self._ready = True

        def delete(self) -> None:
            log.append(("delete", repr(self)))
            self._tpg.node_acls.remove(self)

        def __repr__(self) -> str:
            return f"<acl {self.node_wwn}>"

    class MappedLUN(Recorded):
        def __new__(cls, parent_nodeacl: Any, mapped_lun: int, tpg_lun: Any = None,
                    write_protect: Optional[bool] = None, alias: Optional[str] = None) -> Any:
            if tpg_lun is None:
                return looked_up(parent_nodeacl.mapped_luns, lambda m: m.mapped_lun == mapped_lun, "MappedLUN")
            return object.__new__(cls)

        def __init__(self, parent_nodeacl: Any, mapped_lun: int, tpg_lun: Any = None,
                     write_protect: Optional[bool] = None, alias: Optional[str] = None) -> None:
            if tpg_lun is None:
                return
            self._log = log
            self.mapped_lun, self.write_protect, self.tpg_lun = mapped_lun, bool(write_protect), tpg_lun
            parent_nodeacl.mapped_luns.append(self)
            log.append(("MappedLUN", repr(parent_nodeacl), mapped_lun, tpg_lun.lun, write_protect))
            self._ready = True

        def __repr__(self) -> str:
            return f"<mapped {self.mapped_lun}>"

    class RTSRoot(Recorded):
        def __init__(self) -> None:
            self.storage_objects = list(state["storage"])

        def save_to_file(self, save_file: Optional[str] = None, so_path: Optional[str] = None) -> None:
            """rtslib's whole save: every live object as its dump writes it (every attribute, numbers for digit
            strings, aliases, portal and ACL options; in listing order)."""
            log.append(("save_to_file", save_file))
            if save_file is None:
                return
            objects = [{"plugin": "block", "name": so.name, "dev": so.udev_path, "wwn": so.wwn,
                        "readonly": so.readonly, "write_back": False, "attributes": {"block_size": 512}}
                       for so in state["storage"]]
            targets = []
            for target in state["targets"]:
                tpgs = [{"tag": tpg.tag, "enable": tpg.enable,
                         "attributes": {**{k: int(v) for k, v in tpg._attributes.items()}, "cache_dynamic_acls": 0},
                         "parameters": {"AuthMethod": "CHAP,None"},
                         "portals": [{"ip_address": p.ip_address, "port": p.port, "iser": False, "offload": False}
                                     for p in tpg.network_portals],
                         "luns": [{"index": lun.lun, "storage_object": f"/backstores/block/{lun.storage_object.name}",
                                   "alias": "0123abcd", "alua_tg_pt_gp_name": "default_tg_pt_gp"}
                                  for lun in tpg.luns],
                         "node_acls": [{"node_wwn": acl.node_wwn, "attributes": {"dataout_timeout": 3},
                                        **{name: getattr(acl, name) for name in lio.CHAP_ATTRIBUTES
                                           if getattr(acl, name)},
                                        "mapped_luns": [{"index": m.mapped_lun, "tpg_lun": m.tpg_lun.lun,
                                                         "write_protect": m.write_protect, "alias": "fedc3210"}
                                                        for m in acl.mapped_luns]}
                                       for acl in tpg.node_acls]}
                        for tpg in target.tpgs]
                targets.append({"wwn": target.wwn, "fabric": "iscsi", "tpgs": tpgs})
            Path(save_file).write_text(json.dumps({"storage_objects": objects, "targets": targets}))

    return FakeModule(log=log, FabricModule=FabricModule, Target=Target, TPG=TPG, NetworkPortal=NetworkPortal,
                      BlockStorageObject=BlockStorageObject, LUN=LUN, NodeACL=NodeACL, MappedLUN=MappedLUN,
                      RTSRoot=RTSRoot, RTSLibNotInCFSError=RTSLibNotInCFSError,
                      root=SimpleNamespace(default_save_file="/nonexistent/basalt-test/saveconfig.json"))


def taken(rts: SimpleNamespace) -> List[Tuple[Any, ...]]:
    calls = list(rts.log)
    rts.log.clear()
    return calls
