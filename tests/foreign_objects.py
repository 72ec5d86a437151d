"""Objects that are not the tests': loop devices, a VG in the system's LVM config, a tgt target, and the host
role's own files where a real install has them.

``scripts/test.sh`` makes them before the suites run and removes them after, so
that every CI run proves the tests neither depend on the absence of other
objects nor touch them (``tests/unit/test_foreign_objects.py`` checks they are
there, and intact, during the run)::

    python3 tests/foreign_objects.py up RECORD     # make them; RECORD (JSON) says what was made
    python3 tests/foreign_objects.py down RECORD   # remove exactly what RECORD names

Standard library only: it runs outside pytest, where ``basalt_core`` would be
whatever is installed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

MiB = 1 << 20
#: tgtd's control ports in 1..32767: the tests take theirs from 2000..31999
CONTROL_PORTS = range(32600, 32768)
TGTD_SOCKETS = "/var/run/tgtd"
LVM_ENV = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
NO_ACTIVATION = ["--config", "global{activation=0}"]
#: what each loop device of the record holds at its start (a PV and a LUN hold their own)
MARKER = b"basalt foreign object: not the tests'\n"
#: The host role's own files at their default paths (roles/host/defaults/main.yml): a real install's, which
#: the tests' runs of the roles must neither remove nor change (each test's root has its own).
HOST_ROLE_DEFAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "roles", "host", "defaults",
                                  "main.yml")
HOST_ROLE_FILES = ("basalt_host_modules_load_conf", "basalt_host_multipath_conf")
#: what such a file holds (a comment in both formats)
FILE_MARKER = b"# " + MARKER


def _run(argv: List[str], **kwargs: Any) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60, **kwargs).stdout


def _loop(workdir: str, name: str, marker: bool) -> Dict[str, str]:
    image = os.path.join(workdir, name + ".img")
    with open(image, "wb") as handle:
        handle.truncate(32 * MiB)
        if marker:
            handle.write(MARKER)
    device = _run(["losetup", "--find", "--show", "--nooverlap", image]).strip()
    return {"device": device, "backing_file": image}


def host_role_files() -> List[str]:
    """HOST_ROLE_FILES' default paths, read from the role's defaults."""
    with open(HOST_ROLE_DEFAULTS, encoding="utf-8") as handle:
        text = handle.read()
    found = [re.search(rf"(?m)^{name}: (/\S+)$", text) for name in HOST_ROLE_FILES]
    return [match.group(1) for match in found if match]


def _plant(record: Dict[str, Any], path: str, save: Callable[[], None]) -> None:
    """A foreign file at *path* (and the directories it needs) unless one is there already."""
    if os.path.lexists(path):
        return  # the machine's own: foreign already
    missing = []
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(directory, 0o755)
        record["dirs"].append(directory)
        save()
    with open(path, "xb") as handle:
        handle.write(FILE_MARKER)
    record["files"].append(path)
    save()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tgtadm(port: int, *args: str) -> str:
    return _run(["tgtadm", "-C", str(port), "--lld", "iscsi", *args])


def _start_tgtd(record: Dict[str, Any], lun_device: str) -> None:
    port = next(p for p in CONTROL_PORTS if not os.path.exists(os.path.join(TGTD_SOCKETS, f"socket.{p}")))
    portal = f"127.0.0.1:{_free_port()}"
    log = open(os.path.join(record["workdir"], "tgtd.log"), "wb")
    proc = subprocess.Popen(["tgtd", "-f", "-C", str(port), "--iscsi", f"portal={portal}"], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    log.close()
    iqn = f"iqn.2026-12.dev.basalt.foreign:{secrets.token_hex(4)}"
    record["tgtd"] = {"control_port": port, "pid": proc.pid, "portal": portal, "iqn": iqn, "tid": 1}
    deadline = time.monotonic() + 10
    while True:
        try:
            _tgtadm(port, "--mode", "target", "--op", "show")
            break
        except subprocess.CalledProcessError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tgtd on control port {port} did not answer") from None
            time.sleep(0.05)
    _tgtadm(port, "--mode", "target", "--op", "new", "--tid", "1", "--targetname", iqn)
    _tgtadm(port, "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", lun_device)
    _tgtadm(port, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")


def up(path: str) -> Dict[str, Any]:
    """Make the foreign objects, recording each as soon as it exists (a failure leaves a record to undo)."""
    record: Dict[str, Any] = {"workdir": tempfile.mkdtemp(prefix="basalt-foreign-"), "loops": [], "files": [],
                              "dirs": []}

    def save() -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)

    save()
    for planted in host_role_files():
        _plant(record, planted, save)
    for index in range(2):  # plain loop devices, one of them also the foreign target's LUN
        record["loops"].append(_loop(record["workdir"], f"loop{index}", marker=True))
        save()
    pv = _loop(record["workdir"], "pv", marker=False)
    record["loops"].append(pv)
    save()
    vg = f"basalt-foreign-{secrets.token_hex(4)}"
    # The system's LVM config: visible to every LVM command that does not use a private config.
    _run(["pvcreate", *NO_ACTIVATION, "--yes", pv["device"]], env=LVM_ENV)
    record["pv"] = pv["device"]
    save()
    _run(["vgcreate", *NO_ACTIVATION, vg, pv["device"]], env=LVM_ENV)
    record["vg"] = vg
    save()
    _run(["lvcreate", *NO_ACTIVATION, "--yes", "--zero", "n", "--wipesignatures", "n", "--name", "foreign-data",
          "--size", "8m", vg], env=LVM_ENV)
    try:
        _start_tgtd(record, record["loops"][1]["device"])
    finally:
        save()
    return record


def _attached(device: str, backing_file: str) -> bool:
    listed = json.loads(_run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"]) or '{"loopdevices": []}')
    return any(d["name"] == device and d.get("back-file") == backing_file for d in listed["loopdevices"])


def down(path: str) -> List[str]:
    """Remove what *path* records, and only that; returns what could not be removed."""
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    problems: List[str] = []

    def attempt(what: str, argv: List[str], **kwargs: Any) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)
        if result.returncode != 0:
            problems.append(f"{what}: rc={result.returncode} {result.stderr.strip()}")

    tgtd = record.get("tgtd")
    if tgtd:
        port = str(tgtd["control_port"])
        attempt("delete the foreign target", ["tgtadm", "-C", port, "--lld", "iscsi", "--mode", "target",
                                              "--op", "delete", "--force", "--tid", str(tgtd["tid"])])
        attempt("stop the foreign tgtd", ["tgtadm", "-C", port, "--mode", "system", "--op", "delete"])
        _reap(tgtd["pid"], port, problems)
        for name in (f"socket.{port}", f"socket.{port}.lock"):
            try:
                os.unlink(os.path.join(TGTD_SOCKETS, name))
            except FileNotFoundError:
                pass
    if record.get("vg"):
        attempt("remove the foreign VG", ["vgremove", *NO_ACTIVATION, "-ff", "--yes", record["vg"]], env=LVM_ENV)
    if record.get("pv"):
        attempt("remove the foreign PV", ["pvremove", *NO_ACTIVATION, "-ff", "--yes", record["pv"]], env=LVM_ENV)
    for loop in record["loops"]:
        if _attached(loop["device"], loop["backing_file"]):  # never another's device of the same number
            attempt(f"detach {loop['device']}", ["losetup", "--detach", loop["device"]])
    for planted in record.get("files", []):
        try:
            os.unlink(planted)
        except FileNotFoundError:
            problems.append(f"{planted} was removed by another")
    for directory in reversed(record.get("dirs", [])):
        try:
            os.rmdir(directory)
        except OSError as error:
            problems.append(f"remove {directory}: {error.strerror}")
    shutil.rmtree(record["workdir"], ignore_errors=True)
    os.unlink(path)
    return problems


def _ours(pid: int, port: str) -> bool:
    """Whether *pid* is still the tgtd we started (a pid is reused once it exits)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except FileNotFoundError:
        return False
    return os.path.basename(argv[0]) == b"tgtd" and port.encode() in argv


def _reap(pid: int, port: str, problems: List[str]) -> None:
    """Wait for our tgtd to exit (a child only when ``up`` ran in this process); kill it if it lingers."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if not _ours(pid, port):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    problems.append(f"tgtd {pid} did not stop: killed")


def main(argv: List[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "up":
        record = up(argv[2])
        print(f"foreign objects: loop devices {', '.join(d['device'] for d in record['loops'])}, "
              f"VG {record['vg']}, target {record['tgtd']['iqn']} on tgtd -C {record['tgtd']['control_port']}")
        return 0
    problems = down(argv[2])
    for problem in problems:
        print(f"foreign objects: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
