"""basalt_core.iscsiadm: exact argv in, real open-iscsi 2.1.8 output out (iscsi_recorded, see its README).

Node-database operations were recorded here (and run for real in
tests/iscsi/test_iscsiadm_real.py); login and session output comes from
public reports because the kernel initiator cannot log in on this machine.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

from basalt_core import iscsiadm
from basalt_core.errors import CommandFailed, InvalidRequest, NotFound
from basalt_core.iscsi_target import Chap

RECORDED = Path(__file__).parent / "iscsi_recorded"
T = "iqn.2026-11.io.basalt:pvc-5b1fd0c2"
P = "127.0.0.1:3260"
NODE = ["iscsiadm", "-m", "node", "-T", T, "-p", P]
SHOW = [*NODE, "-o", "show", "-S"]
CHAP = Chap("node-a", "secret-a-0123456")


def rec(name: str) -> str:
    return (RECORDED / name).read_text()


Call = Tuple[List[str], int, str, str]


@pytest.fixture
def adm(script: Any) -> Any:
    """The shared scripted runner (tests/unit/conftest.py), which also records the secrets= of each call."""
    return script


def update(name: str, value: str) -> Call:
    return ([*NODE, "-o", "update", "-n", name, "-v", value], 0, "", "")


# -- parsing ------------------------------------------------------------------


def test_parse_sessions() -> None:
    assert iscsiadm.parse_sessions(rec("iscsiadm_session_public.txt")) == [
        iscsiadm.Session("tcp", 4, "10.2.12.1:3260", 1, "iqn.2011-03.de.suse.hex-10:disk0", False),
        iscsiadm.Session("tcp", 27, "192.168.122.34:3260", 1, "iqn.2003-01.org.alpine.01", False),
    ]
    assert iscsiadm.parse_sessions(rec("iscsiadm_session_old_format_public.txt")) == [
        iscsiadm.Session("tcp", 4, "10.2.12.1:3260", 1, "iqn.2011-03.de.suse.hex-10:disk0", False)]
    assert iscsiadm.parse_sessions("tcp: [3] [fd00::1]:3260,1 iqn.2026-11.io.basalt:v (non-flash)\n")[0].portal == \
        "[fd00::1]:3260"


def test_parse_node_record() -> None:
    settings = iscsiadm.parse_node(rec("iscsiadm_node_show_chap.txt"))
    assert settings["node.name"] == T and settings["node.startup"] == "automatic"
    assert settings["node.session.auth.password"] == "secret-a-0123456"
    assert settings["node.session.auth.username_in"] == ""
    masked = iscsiadm.parse_node(rec("iscsiadm_node_show_masked.txt"))
    assert masked["node.session.auth.password"] == "********"


def test_sessions(adm: Any) -> None:
    adm([(["iscsiadm", "-m", "session"], 21, "", rec("iscsiadm_session_none.stderr"))])
    assert iscsiadm.sessions() == []
    adm([(["iscsiadm", "-m", "session"], 0, rec("iscsiadm_session_public.txt"), "")])
    assert [s.sid for s in iscsiadm.sessions()] == [4, 27]
    adm([(["iscsiadm", "-m", "session"], 20, "", "iscsiadm: can not connect to iSCSI daemon (111)!")])
    with pytest.raises(CommandFailed):
        iscsiadm.sessions()


# -- the node database --------------------------------------------------------------


def test_ensure_node_creates_and_sets_chap(adm: Any) -> None:
    chap = Chap("node-a", "secret-a-0123456", "target-1", "secret-t-6543210")
    runner = adm([
        (SHOW, 21, "", rec("iscsiadm_node_show_missing.stderr")),
        ([*NODE, "-o", "new"], 0, rec("iscsiadm_node_new.stdout"), ""),
        update("node.startup", "automatic"),
        update("node.session.auth.authmethod", "CHAP"),
        update("node.session.auth.username", "node-a"),
        update("node.session.auth.password", "secret-a-0123456"),
        update("node.session.auth.username_in", "target-1"),
        update("node.session.auth.password_in", "secret-t-6543210"),
    ])
    assert iscsiadm.ensure_node(T, P, chap) is True
    assert all(s == ["secret-a-0123456", "secret-t-6543210"] for i, s in enumerate(runner.secrets) if i != 1)


def test_ensure_node_is_idempotent(adm: Any) -> None:
    adm([(SHOW, 0, rec("iscsiadm_node_show_chap.txt"), "")])
    assert iscsiadm.ensure_node(T, P, CHAP) is False


def test_ensure_node_updates_only_what_differs(adm: Any) -> None:
    runner = adm([(SHOW, 0, rec("iscsiadm_node_show_chap.txt"), ""),
                  update("node.session.auth.password", "secret-a-rotated")])
    assert iscsiadm.ensure_node(T, P, Chap("node-a", "secret-a-rotated")) is True
    assert runner.secrets[1] == ["secret-a-rotated"]


def test_ensure_node_without_chap_clears_it(adm: Any) -> None:
    adm([(SHOW, 0, rec("iscsiadm_node_show_chap.txt"), ""),
         update("node.session.auth.authmethod", "None"),
         update("node.session.auth.username", ""),
         update("node.session.auth.password", "")])
    assert iscsiadm.ensure_node(T, P, None) is True


def test_ensure_node_with_iface(adm: Any) -> None:
    adm([([*NODE, "-I", "basalt0", "-o", "show", "-S"], 0, rec("iscsiadm_node_show_chap.txt"), "")])
    assert iscsiadm.ensure_node(T, P, CHAP, iface="basalt0") is False


@pytest.mark.parametrize("target,portal,iface", [("-T", P, None), (T, "-p", None), (T, "1.2.3.4 5", None),
                                                 (T, P, "-x"), ("iqn.2026-11.io.basalt:UPPER", P, None)])
def test_bad_operands(adm: Any, target: str, portal: str, iface: Optional[str]) -> None:
    adm([])
    with pytest.raises(InvalidRequest):
        iscsiadm.ensure_node(target, portal, None, iface=iface)


def test_delete_and_logout(adm: Any) -> None:
    adm([([*NODE, "-o", "delete"], 0, "", "")])
    assert iscsiadm.delete_node(T, P) is True
    adm([([*NODE, "-o", "delete"], 21, "", rec("iscsiadm_delete_missing.stderr"))])
    assert iscsiadm.delete_node(T, P) is False
    adm([([*NODE, "--logout"], 21, "", rec("iscsiadm_logout_none.stderr"))])
    assert iscsiadm.logout(T, P) is False
    adm([([*NODE, "--logout"], 0, f"Logging out of session [sid: 4, target: {T}, portal: 127.0.0.1,3260]\n", "")])
    assert iscsiadm.logout(T, P) is True


# -- login ------------------------------------------------------------------------


def test_login_ok(adm: Any) -> None:
    adm([([*NODE, "--login"], 0, rec("iscsiadm_login_ok_public.stdout"), "")])
    assert iscsiadm.login(T, P) is True


@pytest.mark.parametrize("rc,stderr", [(15, "iscsiadm_login_already_present_public.stderr"),
                                       (15, "iscsiadm_login_session_exists_public.stderr"),
                                       (1, "iscsiadm_login_already_present_public.stderr")])
def test_login_already_logged_in_is_success(adm: Any, rc: int, stderr: str) -> None:
    adm([([*NODE, "--login"], rc, "", rec(stderr))])
    assert iscsiadm.login(T, P) is False


@pytest.mark.parametrize("rc,stderr,reason", [(24, "iscsiadm_login_auth_failure_public.stderr", "auth"),
                                              (19, "iscsiadm_login_refused_public.stderr", "refused"),
                                              (20, "iscsiadm_login_no_iscsid.stderr", "no-iscsid"),
                                              (8, "iscsiadm: initiator reported error (8 - connection timed out)",
                                               "timeout")])
def test_login_failures(adm: Any, rc: int, stderr: str, reason: str) -> None:
    text = rec(stderr) if stderr.endswith(".stderr") else stderr
    adm([([*NODE, "--login"], rc, "", text)])
    with pytest.raises(iscsiadm.LoginFailed) as caught:
        iscsiadm.login(T, P)
    assert caught.value.reason == reason and caught.value.rc == rc


def test_login_without_record(adm: Any) -> None:
    adm([([*NODE, "--login"], 21, "", rec("iscsiadm_node_show_missing.stderr"))])
    with pytest.raises(NotFound):
        iscsiadm.login(T, P)


def test_initiator_name(tmp_path: Path) -> None:
    path = tmp_path / "initiatorname.iscsi"
    path.write_text("## DO NOT EDIT\nInitiatorName=iqn.1993-08.org.debian:01:67b774ffb758\n")
    assert iscsiadm.initiator_name(str(path)) == "iqn.1993-08.org.debian:01:67b774ffb758"
    with pytest.raises(NotFound):
        iscsiadm.initiator_name(str(tmp_path / "missing"))


# -- finding the disk ----------------------------------------------------------------


def _vpd80(serial: str) -> bytes:
    body = serial.encode()
    return bytes([0x00, 0x80]) + len(body).to_bytes(2, "big") + body


def _disk(sys_root: Path, name: str, serial: str) -> None:
    device = sys_root / "block" / name / "device"
    device.mkdir(parents=True)
    (device / "vpd_pg80").write_bytes(_vpd80(serial))


def test_read_vpd_serial() -> None:
    assert iscsiadm.read_vpd_serial(_vpd80("5b1fd0c2a1b2c3d4")) == "5b1fd0c2a1b2c3d4"
    assert iscsiadm.read_vpd_serial(_vpd80("  abc  ")) == "abc"
    assert iscsiadm.read_vpd_serial(b"\x00\x83\x00\x01x") == ""


def test_find_device_by_sysfs_and_by_id(tmp_path: Path) -> None:
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    _disk(sys_root, "sda", "other")
    _disk(sys_root, "sdb", "5b1fd0c2a1b2c3d4")
    (sys_root / "block" / "loop0").mkdir()
    assert iscsiadm.find_device("5b1fd0c2a1b2c3d4", sys_root=str(sys_root), dev_root=str(dev_root)) == \
        str(dev_root / "sdb")
    by_id = dev_root / "disk" / "by-id"
    by_id.mkdir(parents=True)
    (dev_root / "sdc").touch()
    os.symlink("../../sdc", by_id / "scsi-SIET_VIRTUAL-DISK_7a3e9d41e5f60718")
    os.symlink("../../sdc1", by_id / "scsi-SIET_VIRTUAL-DISK_7a3e9d41e5f60718-part1")
    assert iscsiadm.find_device("7a3e9d41e5f60718", sys_root=str(sys_root), dev_root=str(dev_root)) == \
        str(dev_root / "sdc")
    assert iscsiadm.find_device("nothing", sys_root=str(sys_root), dev_root=str(dev_root)) is None


def test_wait_for_device_polls_until_it_appears(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    (sys_root / "block").mkdir(parents=True)
    timer = threading.Timer(0.3, _disk, args=(sys_root, "sdd", "abc123"))
    timer.start()
    started = time.monotonic()
    try:
        found = iscsiadm.wait_for_device("abc123", 5, sys_root=str(sys_root), dev_root="/dev", use_udev=False,
                                         poll_interval=0.05)
    finally:
        timer.cancel()
    assert found == "/dev/sdd" and time.monotonic() - started < 2


def test_wait_for_device_times_out(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="abc123"):
        iscsiadm.wait_for_device("abc123", 0.2, sys_root=str(tmp_path), dev_root=str(tmp_path), poll_interval=0.05)


def test_find_disks_gives_one_disk_per_portal(tmp_path: Path) -> None:
    # Logged in on two portals, the kernel has two SCSI disks with the target's one serial.
    sys_root = tmp_path / "sys"
    _disk(sys_root, "sda", "5b1fd0c2a1b2c3d4")
    _disk(sys_root, "sdb", "other")
    _disk(sys_root, "sdc", "5b1fd0c2a1b2c3d4")
    assert iscsiadm.find_disks("5b1fd0c2a1b2c3d4", sys_root=str(sys_root), dev_root="/dev") == ["/dev/sda", "/dev/sdc"]
    assert iscsiadm.find_disks("nothing", sys_root=str(sys_root), dev_root=str(tmp_path)) == []


def test_wait_for_disks_waits_for_every_path(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    _disk(sys_root, "sda", "abc123")
    timer = threading.Timer(0.3, _disk, args=(sys_root, "sdb", "abc123"))
    timer.start()
    try:
        found = iscsiadm.wait_for_disks("abc123", 2, 5, sys_root=str(sys_root), dev_root="/dev", use_udev=False,
                                        poll_interval=0.05)
    finally:
        timer.cancel()
    assert found == ["/dev/sda", "/dev/sdb"]
    with pytest.raises(NotFound, match="2 of 3 SCSI disk"):
        iscsiadm.wait_for_disks("abc123", 3, 0.2, sys_root=str(sys_root), dev_root="/dev", use_udev=False,
                                poll_interval=0.05)
