"""basalt_core.lio against a fake rtslib_fb that records the object calls.

LIO cannot run on the development and CI machines (no configfs); the VM
tier exercises the real kernel target.  The fake mirrors rtslib-fb 2.1.76:
same constructor signatures (checked against the real package by
``test_fake_matches_real_rtslib`` when rtslib_fb is importable, e.g.
``PYTHONPATH=<unpacked rtslib-fb-2.1.76> pytest tests/unit/test_lio.py``),
and the same properties (NodeACL.chap_*, MappedLUN.write_protect,
TPG.enable, BlockStorageObject.readonly/udev_path/wwn) and methods
(TPG.set_attribute/get_attribute, delete, RTSRoot.save_to_file).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import pytest

from basalt_core import lio
from basalt_core.errors import Conflict, InUse, InvalidRequest, NotFound, Precondition
from basalt_core.iscsi_target import Chap, Export, Grant

T = "iqn.2026-11.io.basalt:pvc-5b1fd0c2"
A = "iqn.2026-11.io.example:node-a"
B = "iqn.2026-11.io.example:node-b"
SERIAL = "5b1fd0c2a1b2c3d4"
CHAP_A = Chap("node-a", "secret-a-0123456", "target-1", "secret-t-6543210")


class Recorded:
    """Base of the fake objects: attribute sets after construction are logged."""

    _log: List[Tuple[Any, ...]]
    _ready = False

    def __setattr__(self, name: str, value: Any) -> None:
        if self._ready and not name.startswith("_"):
            self._log.append(("set", repr(self), name, value))
        object.__setattr__(self, name, value)


def make_fake() -> SimpleNamespace:
    """A stand-in for the rtslib_fb module with its own state and call log."""
    log: List[Tuple[Any, ...]] = []
    state: Dict[str, List[Any]] = {"targets": [], "storage": []}

    class FabricModule:
        def __new__(cls, name: str) -> Any:  # rtslib: FabricModule(name) returns the registered module
            assert name == "iscsi"
            return SimpleNamespace(targets=list(state["targets"]), name=name)

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
        def __init__(self, fabric_module: Any, wwn: Optional[str] = None, mode: str = "any") -> None:
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
        def __init__(self, parent_target: Any, tag: Optional[int] = None, mode: str = "any") -> None:
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
        def __init__(self, parent_tpg: Any, lun: Optional[int] = None, storage_object: Any = None,
                     alias: Optional[str] = None) -> None:
            self.lun, self.storage_object = lun, storage_object
            parent_tpg.luns.append(self)
            log.append(("LUN", repr(parent_tpg), lun, repr(storage_object)))

    class NodeACL(Recorded):
        def __init__(self, parent_tpg: Any, node_wwn: str, mode: str = "any") -> None:
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
        def __init__(self, parent_nodeacl: Any, mapped_lun: int, tpg_lun: Any = None,
                     write_protect: Optional[bool] = None, alias: Optional[str] = None) -> None:
            self._log = log
            self.mapped_lun, self.write_protect, self.tpg_lun = mapped_lun, bool(write_protect), tpg_lun
            parent_nodeacl.mapped_luns.append(self)
            log.append(("MappedLUN", repr(parent_nodeacl), mapped_lun, tpg_lun.lun, write_protect))
            self._ready = True

        def __repr__(self) -> str:
            return f"<mapped {self.mapped_lun}>"

    class RTSRoot:
        def __init__(self) -> None:
            self.storage_objects = list(state["storage"])

        def save_to_file(self, save_file: Optional[str] = None, so_path: Optional[str] = None) -> None:
            log.append(("save_to_file", save_file))

    return SimpleNamespace(log=log, FabricModule=FabricModule, Target=Target, TPG=TPG, NetworkPortal=NetworkPortal,
                           BlockStorageObject=BlockStorageObject, LUN=LUN, NodeACL=NodeACL, MappedLUN=MappedLUN,
                           RTSRoot=RTSRoot)


@pytest.fixture
def rts() -> SimpleNamespace:
    return make_fake()


@pytest.fixture
def backend(rts: SimpleNamespace, tmp_path: Path) -> lio.LioBackend:
    return lio.LioBackend(portals=("192.0.2.10:3260", "[2001:db8::10]:3260"), save_file="/tmp/x.json",
                          lock_path=str(tmp_path / "lio.lock"), rtslib=rts)


def _taken(rts: SimpleNamespace) -> List[Tuple[Any, ...]]:
    calls = list(rts.log)
    rts.log.clear()
    return calls


def test_export_grant_revoke_remove(rts: SimpleNamespace, backend: lio.LioBackend) -> None:
    assert backend.lun == 0
    assert backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False) is True
    tpg = f"<tpg {T}/1>"
    assert _taken(rts) == [
        ("BlockStorageObject", "basalt-" + SERIAL, "/dev/vg/pvc-1", SERIAL, False),
        ("Target", T, "create"),
        ("TPG", T, 1, "create"),
        ("set_attribute", tpg, "generate_node_acls", "0"),
        ("set_attribute", tpg, "demo_mode_write_protect", "1"),
        ("set_attribute", tpg, "authentication", "0"),
        ("NetworkPortal", tpg, "192.0.2.10", 3260, "create"),
        ("NetworkPortal", tpg, "[2001:db8::10]", 3260, "create"),
        ("LUN", tpg, 0, f"<so basalt-{SERIAL}>"),
        ("set", tpg, "enable", True),
    ]
    assert backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False) is False
    assert _taken(rts) == []

    assert backend.ensure_grant(T, A, CHAP_A) is True
    assert _taken(rts) == [
        ("NodeACL", tpg, A, "create"),
        ("set", f"<acl {A}>", "chap_userid", "node-a"),
        ("set", f"<acl {A}>", "chap_password", "secret-a-0123456"),
        ("set", f"<acl {A}>", "chap_mutual_userid", "target-1"),
        ("set", f"<acl {A}>", "chap_mutual_password", "secret-t-6543210"),
        ("MappedLUN", f"<acl {A}>", 0, 0, False),
        ("set_attribute", tpg, "authentication", "1"),
    ]
    assert backend.ensure_grant(T, A, CHAP_A) is False
    assert _taken(rts) == []

    assert backend.exports() == [Export(T, 0, SERIAL, "/dev/vg/pvc-1", False, (Grant(A, CHAP_A),))]
    with pytest.raises(Conflict, match="both use CHAP"):
        backend.ensure_grant(T, B, None)
    with pytest.raises(InUse):
        backend.remove_export(T)
    _taken(rts)

    backend.persist()
    assert _taken(rts) == [("save_to_file", "/tmp/x.json")]

    assert backend.revoke_grant(T, A) is True
    assert _taken(rts) == [("delete", f"<acl {A}>")]
    assert backend.revoke_grant(T, A) is False
    assert backend.remove_export(T) is True
    assert _taken(rts) == [("delete", f"<target {T}>"), ("delete", f"<so basalt-{SERIAL}>")]
    assert backend.remove_export(T) is False
    assert backend.exports() == []


def test_read_only_export_write_protects_mapped_luns(rts: SimpleNamespace, backend: lio.LioBackend) -> None:
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, True)
    assert _taken(rts)[0] == ("BlockStorageObject", "basalt-" + SERIAL, "/dev/vg/pvc-1", SERIAL, True)
    assert backend.ensure_grant(T, A, None) is True
    assert _taken(rts) == [("NodeACL", f"<tpg {T}/1>", A, "create"), ("MappedLUN", f"<acl {A}>", 0, 0, True)]
    [export] = backend.exports()
    assert export.read_only is True and export.grants == (Grant(A, None),)
    with pytest.raises(Conflict):
        backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    with pytest.raises(Conflict):
        backend.ensure_export(T, "/dev/vg/other", SERIAL, True)


def test_changed_chap_is_rewritten(rts: SimpleNamespace, backend: lio.LioBackend) -> None:
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    backend.ensure_grant(T, A, CHAP_A)
    _taken(rts)
    assert backend.ensure_grant(T, A, Chap("node-a", "secret-a-rotated")) is True
    assert _taken(rts) == [
        ("set", f"<acl {A}>", "chap_password", "secret-a-rotated"),
        ("set", f"<acl {A}>", "chap_mutual_userid", ""),
        ("set", f"<acl {A}>", "chap_mutual_password", ""),
    ]


def test_grant_needs_export_and_valid_names(backend: lio.LioBackend) -> None:
    with pytest.raises(NotFound):
        backend.ensure_grant(T, A, None)
    with pytest.raises(InvalidRequest):
        backend.ensure_grant(T, "ALL", None)
    with pytest.raises(InvalidRequest):
        backend.ensure_export(T, "-x", SERIAL, False)
    with pytest.raises(InvalidRequest):
        lio.LioBackend(portals=("1.2.3.4:99999",), rtslib=object())


def test_foreign_targets_are_not_reported(rts: SimpleNamespace, backend: lio.LioBackend) -> None:
    so = rts.BlockStorageObject("admin-disk", dev="/dev/sdz", wwn="x")
    target = rts.Target(None, "iqn.2003-01.org.linux-iscsi.admin:sn.1", mode="create")
    tpg = rts.TPG(target, 1)
    rts.LUN(tpg, lun=0, storage_object=so)
    assert backend.exports() == []


def test_without_rtslib_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def no_rtslib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "rtslib_fb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rtslib)
    with pytest.raises(Precondition, match="rtslib-fb"):
        lio.LioBackend(lock_path=str(tmp_path / "lio.lock")).exports()


def test_fake_matches_real_rtslib() -> None:
    real = pytest.importorskip("rtslib_fb", reason="rtslib_fb not installed (LIO runs in the VM tier only)")
    fake = make_fake()
    for name in ("Target", "TPG", "NetworkPortal", "BlockStorageObject", "LUN", "NodeACL", "MappedLUN", "RTSRoot"):
        real_sig = inspect.signature(getattr(real, name).__init__)
        fake_sig = inspect.signature(getattr(fake, name).__init__)
        assert list(real_sig.parameters) == list(fake_sig.parameters), name
        assert [p.default for p in real_sig.parameters.values()] == [p.default for p in fake_sig.parameters.values()]
    assert list(inspect.signature(real.FabricModule.__new__).parameters) == ["cls", "name"]
    assert list(inspect.signature(real.RTSRoot.save_to_file).parameters) == ["self", "save_file", "so_path"]
    for cls, props in ((real.NodeACL, ("chap_userid", "chap_password", "chap_mutual_userid", "chap_mutual_password",
                                       "node_wwn", "mapped_luns")),
                       (real.TPG, ("enable", "tag", "luns", "node_acls", "network_portals")),
                       (real.MappedLUN, ("write_protect", "mapped_lun")),
                       (real.BlockStorageObject, ("readonly", "udev_path", "wwn", "name", "plugin")),
                       (real.NetworkPortal, ("ip_address", "port")),
                       (real.LUN, ("lun", "storage_object")),
                       (real.Target, ("tpgs",))):
        for prop in props:
            assert hasattr(cls, prop) or prop == "plugin", f"{cls.__name__}.{prop}"
    for cls, attr in ((real.NodeACL, "chap_userid"), (real.MappedLUN, "write_protect"), (real.TPG, "enable")):
        assert getattr(cls, attr).fset is not None, f"{cls.__name__}.{attr} is settable"
    assert callable(real.TPG.set_attribute) and callable(real.TPG.get_attribute)


def test_persist_defaults_to_the_file_rtslib_restores_at_boot(rts: SimpleNamespace, tmp_path: Path) -> None:
    # None lets rtslib pick its default_save_file: Debian's python3-rtslib-fb restores
    # /etc/rtslib-fb-target/saveconfig.json at boot, upstream /etc/target/saveconfig.json (VM tier).
    lio.LioBackend(portals=("192.0.2.10:3260",), lock_path=str(tmp_path / "lio.lock"), rtslib=rts).persist()
    assert _taken(rts) == [("save_to_file", None)]
