"""basalt_core.lio against a fake rtslib_fb that records the object calls.

LIO cannot run on the development and CI machines (no configfs); the VM
tier exercises the real kernel target.  The fake mirrors rtslib-fb's API
(2.1.76 as Debian 12 ships it; the dev extra installs rtslib-fb from PyPI):
``test_fake_matches_real_rtslib`` records every class, constructor, method
and attribute that basalt_core.lio itself uses on the fake, and checks each
against the real package (configfs is absent, so only its API can be
checked): the class exists, the arguments bind to the real signature, the
attribute exists and is settable where lio sets it.
"""

from __future__ import annotations

import inspect
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Counter, List, Optional, Tuple

import pytest
from lio_testlib import CHAP_A, RECORDING, SERIAL, A, ApiUse, B, T, make_fake, taken

from basalt_core import exports, lio
from basalt_core.errors import Conflict, InUse, InvalidRequest, NotFound, Precondition
from basalt_core.iscsi_target import Chap, Export, Grant


@pytest.fixture
def rts() -> SimpleNamespace:
    return make_fake()


@pytest.fixture
def backend(rts: SimpleNamespace, tmp_path: Path) -> lio.LioBackend:
    return lio.LioBackend(portals=("192.0.2.10:3260", "[2001:db8::10]:3260"), save_file=str(tmp_path / "saved.json"),
                          lock_path=str(tmp_path / "lio.lock"), rtslib=rts)


def test_export_grant_revoke_remove(rts: SimpleNamespace, backend: lio.LioBackend) -> None:
    assert backend.lun == 0
    assert backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False) is True
    tpg = f"<tpg {T}/1>"
    assert taken(rts) == [
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
    assert taken(rts) == []

    assert backend.ensure_grant(T, A, CHAP_A) is True
    assert taken(rts) == [
        ("NodeACL", tpg, A, "create"),
        ("set", f"<acl {A}>", "chap_userid", "node-a"),
        ("set", f"<acl {A}>", "chap_password", "secret-a-0123456"),
        ("set", f"<acl {A}>", "chap_mutual_userid", "target-1"),
        ("set", f"<acl {A}>", "chap_mutual_password", "secret-t-6543210"),
        ("MappedLUN", f"<acl {A}>", 0, 0, False),
        ("set_attribute", tpg, "authentication", "1"),
    ]
    assert backend.ensure_grant(T, A, CHAP_A) is False
    assert taken(rts) == []

    assert backend.exports() == [Export(T, 0, SERIAL, "/dev/vg/pvc-1", False, (Grant(A, CHAP_A),))]
    with pytest.raises(Conflict, match="both use CHAP"):
        backend.ensure_grant(T, B, None)
    with pytest.raises(InUse):
        backend.remove_export(T)
    taken(rts)

    backend.persist()  # the first save: no file yet, so rtslib's whole save
    assert taken(rts) == [("save_to_file", backend.save_file)]

    assert backend.revoke_grant(T, A) is True
    assert taken(rts) == [("delete", f"<acl {A}>")]
    assert backend.revoke_grant(T, A) is False
    assert backend.remove_export(T) is True
    assert taken(rts) == [("delete", f"<target {T}>"), ("delete", f"<so basalt-{SERIAL}>")]
    assert backend.remove_export(T) is False
    assert backend.exports() == []


def test_read_only_export_write_protects_mapped_luns(rts: SimpleNamespace, backend: lio.LioBackend) -> None:
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, True)
    assert taken(rts)[0] == ("BlockStorageObject", "basalt-" + SERIAL, "/dev/vg/pvc-1", SERIAL, True)
    assert backend.ensure_grant(T, A, None) is True
    assert taken(rts) == [("NodeACL", f"<tpg {T}/1>", A, "create"), ("MappedLUN", f"<acl {A}>", 0, 0, True)]
    [export] = backend.exports()
    assert export.read_only is True and export.grants == (Grant(A, None),)
    with pytest.raises(Conflict):
        backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    with pytest.raises(Conflict):
        backend.ensure_export(T, "/dev/vg/other", SERIAL, True)


def test_changed_chap_is_rewritten(rts: SimpleNamespace, backend: lio.LioBackend) -> None:
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    backend.ensure_grant(T, A, CHAP_A)
    taken(rts)
    assert backend.ensure_grant(T, A, Chap("node-a", "secret-a-rotated")) is True
    assert taken(rts) == [
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


def _real_class(real: Any, fake_name: str) -> Any:
    """The real class behind a fake's name: FabricModule("iscsi") is an ISCSIFabricModule."""
    return real.fabric.fabric_modules["iscsi"] if fake_name == "FabricModule" else getattr(real, fake_name)


def _set_in_a_constructor(cls: Any, name: str) -> bool:
    """Whether some __init__ in *cls*'s MRO assigns ``self.<name>`` (rtslib keeps a few plain attributes)."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and f"self.{name} =" in inspect.getsource(init):
            return True
    return False


def _exercise(tmp_path: Path) -> ApiUse:
    """Every path of LioBackend against the fake, recording what it uses."""
    rts = make_fake()
    backend = lio.LioBackend(portals=("192.0.2.10:3260",), save_file=str(tmp_path / "saved.json"),
                             lock_path=str(tmp_path / "lio.lock"), rtslib=rts)
    use = ApiUse()
    RECORDING.append(use)
    try:
        backend.ping()
        backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
        backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
        backend.ensure_grant(T, A, CHAP_A)
        backend.ensure_grant(T, A, Chap("node-a", "secret-a-rotated"))
        backend.exports()
        backend.persist()
        backend.revoke_grant(T, A)
        backend.remove_export(T)
        backend.ensure_export(T, "/dev/vg/pvc-2", SERIAL, True)
        backend.ensure_grant(T, B, None)
        [acl] = rts.FabricModule("iscsi").targets[0].tpgs[0].node_acls
        acl.mapped_luns[0].write_protect = False  # someone changed it: lio puts it back
        backend.ensure_grant(T, B, None)
    finally:
        RECORDING.clear()
    return use


def test_fake_matches_real_rtslib(tmp_path: Path) -> None:
    use = _exercise(tmp_path)
    constructed = {owner for owner, method, _a, _k in use.calls if not method}
    assert constructed == {"FabricModule", "Target", "TPG", "NetworkPortal", "BlockStorageObject", "LUN", "NodeACL",
                           "MappedLUN", "RTSRoot"}, "the exercise must reach every class lio constructs"
    assert ("NodeACL", "chap_password") in use.writes and ("MappedLUN", "write_protect") in use.writes
    assert ("TPG", "set_attribute") in {(o, m) for o, m, _a, _k in use.calls}
    real = pytest.importorskip("rtslib_fb", reason="rtslib-fb is not installed (pip install -e .[dev] installs it)")
    problems = []
    for owner, method, args, kwargs in use.calls:
        if not method:  # a constructor: the module attribute, called as lio calls it
            real_cls = getattr(real, owner, None)
            if real_cls is None:
                problems.append(f"rtslib_fb has no {owner}")
                continue
            function, first = (real_cls.__new__, real_cls) if owner == "FabricModule" else (real_cls.__init__, None)
        else:
            function, first = getattr(_real_class(real, owner), method, None), None
            if not callable(function):
                problems.append(f"rtslib_fb {owner} has no method {method}")
                continue
        try:
            inspect.signature(function).bind(first, *args, **kwargs)
        except TypeError as error:
            problems.append(f"{owner}{'.' + method if method else ''}{args!r} {kwargs!r}: {error}")
    for owner, name in sorted(set(use.reads) | use.writes):
        real_cls = _real_class(real, owner)
        found = inspect.getattr_static(real_cls, name, None)
        if (owner, name) in use.writes:
            if not (isinstance(found, property) and found.fset is not None):
                problems.append(f"{owner}.{name} is set by lio but not a settable property in rtslib_fb")
        elif found is None and not _set_in_a_constructor(real_cls, name):
            problems.append(f"{owner}.{name} is read by lio but rtslib_fb has no such attribute")
    assert problems == []


def test_the_api_check_catches_a_drifted_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is only worth something if it fails: lio using a name rtslib does not have is caught."""
    real = pytest.importorskip("rtslib_fb", reason="rtslib-fb is not installed (pip install -e .[dev] installs it)")
    monkeypatch.setattr(real.TPG, "set_attribute", None)
    with pytest.raises(AssertionError, match="TPG has no method set_attribute"):
        test_fake_matches_real_rtslib(tmp_path)


def test_persist_defaults_to_the_file_rtslib_restores_at_boot(rts: SimpleNamespace, tmp_path: Path) -> None:
    # None lets rtslib pick its default_save_file: Debian's python3-rtslib-fb restores
    # /etc/rtslib-fb-target/saveconfig.json at boot, upstream /etc/target/saveconfig.json (VM tier).
    lio.LioBackend(portals=("192.0.2.10:3260",), lock_path=str(tmp_path / "lio.lock"), rtslib=rts).persist()
    assert taken(rts) == [("save_to_file", None)]


class _Pool:
    """The pool side of a publish: the volume's device (attach and detach are the pool's, not LIO's)."""

    def attach(self, volume: Any) -> str:
        return "/dev/vg/" + volume.id

    def load_volume(self, volume_id: str) -> Any:
        return SimpleNamespace(id=volume_id, publications={})

    def detach(self, volume: Any) -> bool:
        return True


def _publish_and_unpublish_reads(tmp_path: Path, others: int) -> Tuple[Counter[Tuple[str, str]], List[Any]]:
    """ControllerPublish + ControllerUnpublish of one volume on a host that exports *others* more."""
    rts = make_fake()
    backend = lio.LioBackend(portals=("192.0.2.10:3260",), lock_path=str(tmp_path / f"lio-{others}.lock"),
                             rtslib=rts)
    settings = exports.ExportSettings("iqn.2026-11.io.basalt", ("192.0.2.10:3260",))
    for i in range(others):
        backend.ensure_export(f"iqn.2026-11.io.basalt:other-{i}", f"/dev/vg/other-{i}", f"{i:016x}", False)
        backend.ensure_grant(f"iqn.2026-11.io.basalt:other-{i}", B, CHAP_A)
    taken(rts)
    use = ApiUse()
    RECORDING.append(use)
    try:
        volume = SimpleNamespace(id="pvc-1")
        exports.ensure_exported(_Pool(), backend, settings, volume, A, CHAP_A, False)  # type: ignore[arg-type]
        exports.ensure_unexported(_Pool(), backend, settings, "pvc-1", A)  # type: ignore[arg-type]
    finally:
        RECORDING.clear()
    return use.reads, taken(rts)


def test_publish_reads_and_changes_do_not_grow_with_the_exports_on_the_host(tmp_path: Path) -> None:
    """LIO's cost per RPC is rtslib's own calls: the changes a bare rtslib script would make, plus lookups
    that read the fabric's target list and the storage objects once each step, not every target's objects."""
    alone_reads, alone_changes = _publish_and_unpublish_reads(tmp_path, 0)
    busy_reads, busy_changes = _publish_and_unpublish_reads(tmp_path, 30)
    assert busy_changes == alone_changes
    made = [c[0] for c in alone_changes if c[0] not in ("set", "set_attribute")]
    assert made == ["BlockStorageObject", "Target", "TPG", "NetworkPortal", "LUN", "NodeACL", "MappedLUN",
                    "save_to_file", "delete", "delete", "delete", "save_to_file"]  # every one a bare script needs
    per_target = {k: v for k, v in busy_reads.items() if k[0] in ("TPG", "LUN", "NodeACL", "MappedLUN")}
    assert per_target == {k: v for k, v in alone_reads.items() if k[0] in ("TPG", "LUN", "NodeACL", "MappedLUN")}
    # every object opened at its path: no listing of the targets, the backstores listed once (a new export)
    assert busy_reads[("FabricModule", "targets")] == alone_reads[("FabricModule", "targets")] == 0
    assert busy_reads[("RTSRoot", "storage_objects")] == alone_reads[("RTSRoot", "storage_objects")] == 1


def test_withdraw_keeps_the_target_for_another_grant_and_removes_it_with_the_last(
        rts: SimpleNamespace, backend: lio.LioBackend) -> None:
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    backend.ensure_grant(T, A, CHAP_A)
    backend.ensure_grant(T, B, Chap("node-b", "secret-b-0123456"))
    taken(rts)
    assert backend.withdraw(T, A) == (True, False)
    assert taken(rts) == [("delete", f"<acl {A}>")]
    [export] = backend.exports()
    assert [g.initiator_iqn for g in export.grants] == [B]
    assert backend.withdraw(T, A) == (False, False)
    assert backend.withdraw(T, B) == (True, True)
    assert taken(rts) == [("delete", f"<acl {B}>"), ("delete", f"<target {T}>"), ("delete", f"<so basalt-{SERIAL}>")]
    assert backend.withdraw(T, B) == (False, True) and backend.exports() == []


def test_lookups_take_rtslib_2_1s_name_for_a_miss(tmp_path: Path) -> None:
    """Debian 12's rtslib-fb 2.1 calls the lookup miss RTSLibNotInCFS (2.2: RTSLibNotInCFSError)."""
    rts = make_fake()
    rts.RTSLibNotInCFS = rts.RTSLibNotInCFSError
    del rts.RTSLibNotInCFSError
    backend = lio.LioBackend(portals=("192.0.2.10:3260",), lock_path=str(tmp_path / "lio.lock"), rtslib=rts)
    assert backend.export(T) is None
    assert backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False) is True
    assert backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False) is False


def test_concurrent_publishes_never_interleave_in_lio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LIO's objects and its saved configuration are every volume's: twelve publishes of twelve volumes at
    once run one at a time inside the backend (as tgt's do), and every export and grant is there after."""
    rts = make_fake()
    backend = lio.LioBackend(portals=("192.0.2.10:3260",), lock_path=str(tmp_path / "lio.lock"), rtslib=rts)
    settings = exports.ExportSettings("iqn.2026-11.io.basalt", ("192.0.2.10:3260",))
    active, most = [0], [0]
    real_save = rts.RTSRoot.save_to_file

    def slow_save(self: Any, save_file: Optional[str] = None, so_path: Optional[str] = None) -> None:
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.005)  # long enough for another thread to get in, were it let in
        real_save(self, save_file, so_path)
        active[0] -= 1
    monkeypatch.setattr(rts.RTSRoot, "save_to_file", slow_save)

    def publish(i: int) -> None:
        volume = SimpleNamespace(id=f"pvc-{i}")
        exports.ensure_exported(_Pool(), backend, settings, volume, f"iqn.2026-11.io.example:node-{i}",  # type: ignore[arg-type]
                                Chap(f"user-{i}", f"secret-{i:02d}-0123456"), False)
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(publish, range(12)))
    assert most[0] == 1
    found = {e.target_iqn: e.grants for e in backend.exports()}
    assert len(found) == 12 and all(len(g) == 1 and g[0].chap is not None for g in found.values())
