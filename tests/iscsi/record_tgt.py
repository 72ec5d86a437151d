"""Re-record tests/unit/plugins/module_utils/iscsi_recorded/tgtadm_* from a private tgtd
(root; tgt + libiscsi installed).

    python3 tests/iscsi/record_tgt.py

Starts its own tgtd on a free port, a loop device on its own sparse file,
builds two targets through TgtBackend, holds one libiscsi session open, and
writes what tgtadm prints.  Cleans up exactly what it created.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from libiscsi_client import Session
from tgtd_testlib import free_port, start_private_tgtd, stop_private_tgtd

from basalt_core import tgt
from basalt_core.iscsi_target import Chap

OUT = Path(__file__).resolve().parents[1] / "unit" / "plugins" / "module_utils" / "iscsi_recorded"
RW = "iqn.2026-11.io.basalt:pvc-5b1fd0c2"
RO = "iqn.2026-11.io.basalt:pvc-7a3e9d41"
NODE_A = "iqn.2026-11.io.example:node-a"
NODE_B = "iqn.2026-11.io.example:node-b"


def tgtadm(control: int, args: List[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(["tgtadm", "-C", str(control), "--lld", "iscsi", *args], capture_output=True, text=True,
                          timeout=10, check=False)


def main() -> None:
    control = 31000 + free_port() % 1700
    portal = f"127.0.0.1:{free_port()}"
    proc = start_private_tgtd(control, portal)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "v.img"
        with open(image, "wb") as handle:
            handle.truncate(64 << 20)
        device = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                                check=True).stdout.strip()
        try:
            backend = tgt.TgtBackend(control_port=control, conf_path=f"{tmp}/c.conf", record_path=f"{tmp}/r.json")
            none = tgtadm(control, ["--mode", "target", "--op", "show"]).stdout
            (OUT / "tgtadm_target_show_none.txt").write_text(none)
            (OUT / "tgtadm_account_show_none.txt").write_text(
                tgtadm(control, ["--mode", "account", "--op", "show"]).stdout)
            backend.ensure_export(RW, device, "5b1fd0c2a1b2c3d4", False)
            backend.ensure_export(RO, device, "7a3e9d41e5f60718", True)
            chap = Chap("node-a", "secret-a-0123456", "target-1", "secret-t-6543210")
            backend.ensure_grant(RW, NODE_A, chap)
            backend.ensure_grant(RO, NODE_A, None)
            backend.ensure_grant(RO, NODE_B, None)
            with Session(portal, RW, NODE_A, user=chap.user, password=chap.password):
                show = tgtadm(control, ["--mode", "target", "--op", "show"]).stdout
                (OUT / "tgtadm_target_show.txt").write_text(show.replace(device, "/dev/loop7"))
                (OUT / "tgtadm_conn_show.txt").write_text(tgtadm(control, ["--mode", "conn", "--op", "show",
                                                                           "--tid", "1"]).stdout)
            (OUT / "tgtadm_account_show.txt").write_text(tgtadm(control, ["--mode", "account", "--op", "show"]).stdout)
            (OUT / "tgtadm_portal_show.txt").write_text(
                tgtadm(control, ["--mode", "portal", "--op", "show"]).stdout.replace(portal, "127.0.0.1:3260"))
            errors = []
            for args in (
                ["--mode", "target", "--op", "new", "--tid", "1", "--targetname", RW],
                ["--mode", "target", "--op", "delete", "--tid", "99"],
                ["--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", device],
                ["--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "2", "--backing-store", "/nonexistent"],
                ["--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "2", "--backing-store", device,
                 "--params", "readonly=1"],
                ["--mode", "account", "--op", "new", "--user", "node-a", "--password", "xxxxxxxxxxxx"],
                ["--mode", "account", "--op", "bind", "--tid", "1", "--user", "nobody"],
                ["--mode", "account", "--op", "bind", "--tid", "1", "--user", "node-a", "--outgoing"],
                ["--mode", "target", "--op", "bind", "--tid", "1", "--initiator-name", NODE_A],
                ["--mode", "target", "--op", "unbind", "--tid", "1", "--initiator-name", NODE_B],
                ["--mode", "conn", "--op", "delete", "--tid", "1", "--sid", "99", "--cid", "0"],
            ):
                result = tgtadm(control, args)
                shown = " ".join(args).replace(device, "/dev/loop7")
                errors.append(f"{shown}\trc={result.returncode}\t{result.stderr.strip()}")
            # a target with a logged-in session refuses a delete without --force
            with Session(portal, RO, NODE_A):
                result = tgtadm(control, ["--mode", "target", "--op", "delete", "--tid", "2"])
                errors.append(f"--mode target --op delete --tid 2 (session open)\trc={result.returncode}\t"
                              f"{result.stderr.strip()}")
            (OUT / "tgtadm_errors.tsv").write_text("\n".join(errors) + "\n")
        finally:
            stop_private_tgtd(control, proc)
            subprocess.run(["losetup", "--detach", device], check=False)


if __name__ == "__main__":
    main()
