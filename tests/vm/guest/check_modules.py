#!/usr/bin/env python3
"""Real kernel check: the collection's modules through real ansible-playbook (inside the VM).

One playbook, every step run twice (the second must report changed: false):
basalt.csi.volume makes a volume in a file pool on the scratch disk;
basalt.csi.iscsi_export exports it through LIO (rtslib-fb, in the module's
own process) on 127.0.0.1:3260 to this VM's initiator IQN only, with CHAP;
basalt.csi.iscsi_attach logs open-iscsi in (a real /dev/sdX, found by its
unit serial; check mode first); basalt.csi.mount formats and mounts it; a
file is written and read back; then unmount, log out, withdraw the export,
delete the volume.  Between the logout and the delete, the volume's image is
read with debugfs: the file written through iSCSI is in it.

ansible-core (the version scripts/ansible-checks.sh pins) comes from the
host's wheel cache (tests/vm/pydeps.py ``ensure_ansible``) over the
read-only 9p share "ansible"; the collection is a symlink tree under /tmp
pointing at the read-only project tree.  A summary of the registered results
goes to /results/modules.json for the host-side test.

Usage: check_modules.py DISK
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

DEPS = Path("/opt/basalt-ansible")
COLLECTIONS = Path("/tmp/basalt-collections")
WORK = Path("/srv/basalt")
RESULTS = Path(os.environ.get("BASALT_RESULTS", "/results"))
TREE = Path(os.environ.get("BASALT_TREE", "/basalt"))
PORTAL = "127.0.0.1:3260"
MESSAGE = "written through iSCSI by basalt.csi.mount's filesystem\n"


def step(msg: str) -> None:
    print(f"  + {msg}", flush=True)


def sh(*cmd: str, check: bool = True, env: dict[str, str] | None = None,
       timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          timeout=timeout, check=False)
    print(f"    $ {' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}", flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"  FAILED: {cmd[0]} exited {proc.returncode}")
    return proc


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def stream(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run *cmd*, its output to the console and to *log* line by line (a slow run still shows how far it got)."""
    lines = []
    with log.open("w") as sink, subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"    | {uptime():7.1f} {line}", end="", flush=True)
            sink.write(line)
            sink.flush()
            lines.append(line)
    return proc.returncode, "".join(lines)


def initiator_name() -> str:
    for line in Path("/etc/iscsi/initiatorname.iscsi").read_text().splitlines():
        if line.startswith("InitiatorName="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("  FAILED: /etc/iscsi/initiatorname.iscsi has no InitiatorName=")


def twice(name: str, module: str, register: str, args: Mapping[str, object],
          **extra: object) -> list[dict[str, object]]:
    """The task, then the same task again (registered as REGISTER and REGISTER_again)."""
    first = {"name": name, module: args, "register": register, **extra}
    again = {"name": f"{name} again", module: args, "register": f"{register}_again", **extra}
    return [first, again]


def playbook(iqn: str, secret: str) -> list[dict[str, object]]:
    pool = f"file:{WORK}/pool"
    export = {"pool": pool, "volume_name": "vm-data", "backend": "lio", "initiators": [iqn],
              "chap": {"user": "vm-node", "password": secret}, "portals": [PORTAL],
              "lio_save_file": f"{WORK}/saveconfig.json"}
    attach = {"target_iqn": "{{ exported.export.target_iqn }}", "portals": "{{ exported.export.portals }}",
              "serial": "{{ exported.export.serial }}", "chap": {"user": "vm-node", "password": secret}}
    mnt = f"{WORK}/mnt"
    tasks: list[dict[str, object]] = [
        *twice("Create the volume", "basalt.csi.volume", "volume",
               {"name": "vm-data", "pool": pool, "size": "64Mi"}),
        *twice("Export it through LIO to this host's IQN with CHAP", "basalt.csi.iscsi_export", "exported", export),
        {"name": "Log in (check mode)", "basalt.csi.iscsi_attach": attach, "check_mode": True,
         "register": "attach_check"},
        *twice("Log in and find the disk", "basalt.csi.iscsi_attach", "attached", attach),
        *twice("Format and mount the disk", "basalt.csi.mount", "mounted",
               {"device": "{{ attached.device }}", "path": mnt, "fstype": "ext4"}),
        {"name": "Write a file", "ansible.builtin.copy": {"dest": f"{mnt}/hello.txt", "content": MESSAGE,
                                                          "mode": "0644"}, "register": "written"},
        {"name": "Read it back", "ansible.builtin.slurp": {"src": f"{mnt}/hello.txt"}, "register": "read"},
        *twice("Unmount", "basalt.csi.mount", "unmounted", {"path": mnt, "state": "absent"}),
        *twice("Log out", "basalt.csi.iscsi_attach", "detached",
               {"target_iqn": "{{ exported.export.target_iqn }}", "portals": "{{ exported.export.portals }}",
                "state": "absent"}),
        *twice("Withdraw the export", "basalt.csi.iscsi_export", "withdrawn",
               {"pool": pool, "volume_name": "vm-data", "backend": "lio", "state": "absent",
                "lio_save_file": f"{WORK}/saveconfig.json"}),
        {"name": "Read the file from the volume's image", "ansible.builtin.command":
            {"argv": ["debugfs", "-R", "cat /hello.txt", "{{ volume.volume.path }}"]}, "register": "in_image",
         "changed_when": False},
        *twice("Delete the volume", "basalt.csi.volume", "deleted", {"name": "vm-data", "pool": pool,
                                                                    "state": "absent"}),
    ]
    pairs = ["volume", "exported", "attached", "mounted", "unmounted", "detached", "withdrawn", "deleted"]
    tasks.append({"name": "Every step changed once, then not again", "ansible.builtin.assert": {"that": [
        *(f"{r} is changed" for r in pairs), *(f"{r}_again is not changed" for r in pairs),
        "attach_check is changed", "attach_check.device is none",
        "attached.device is match('^/dev/sd[a-z]+$')", "attached_again.device == attached.device",
        "exported.export.grants | map(attribute='initiator') | list == [" + json.dumps(iqn) + "]",
        "exported.export.lun == 0",
        f"(read.content | b64decode) == {json.dumps(MESSAGE)}",
        f"in_image.stdout == {json.dumps(MESSAGE.rstrip())}",
        "detached.device is none", "withdrawn.export.exported == false",
    ]}})
    tasks.append({"name": "Write the summary", "ansible.builtin.copy": {
        "dest": str(RESULTS / "modules.json"), "mode": "0644",
        "content": "{{ {" + ", ".join(f"'{r}': {r}, '{r}_again': {r}_again" for r in pairs) + "} | to_json }}"}})
    return [{"name": "Basalt modules on a real kernel", "hosts": "localhost", "gather_facts": False,
             "tasks": tasks}]


def main() -> int:
    disk = sys.argv[1]
    step("ansible-core from the 9p share 'ansible'; the collection linked under /tmp")
    DEPS.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(DEPS)], check=False).returncode != 0:
        sh("mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=262144,ro", "ansible", str(DEPS))
    link = COLLECTIONS / "ansible_collections" / "basalt" / "csi"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(TREE)
    step(f"a filesystem for the pool on {disk}; iscsid")
    sh("mkfs.ext4", "-q", "-F", disk)
    WORK.mkdir(parents=True, exist_ok=True)
    sh("mount", disk, str(WORK))
    sh("iscsid")
    try:
        iqn = initiator_name()
        secret = os.urandom(6).hex()  # 12 characters, as RFC 3720 recommends at least
        book = Path("/tmp/basalt-modules-playbook.json")
        book.write_text(json.dumps(playbook(iqn, secret)))
        env = dict(os.environ, PYTHONPATH=str(DEPS), LC_ALL="C.UTF-8", LANG="C.UTF-8",
                   ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
                   ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3", ANSIBLE_PIPELINING="1",
                   # the read-only share holds ansible-core's bytecode, compiled by the host (pydeps.py)
                   PYTHONDONTWRITEBYTECODE="1")
        step(f"ansible-playbook as initiator {iqn}")
        rc, output = stream(["python3", "-m", "ansible.cli.playbook", "-i", "localhost,", "-c", "local", str(book)],
                            env, RESULTS / "modules-playbook.log")
        if secret in output:
            raise SystemExit("  FAILED: the CHAP secret appears in ansible-playbook's output")
        if rc != 0:
            raise SystemExit(f"  FAILED: ansible-playbook exited {rc}")
        print("modules: ok", flush=True)
        return 0
    finally:
        step("tear down: whatever the playbook left (nothing when it passed)")
        sh("iscsiadm", "-m", "node", "--logoutall=all", check=False)
        sh("iscsiadm", "-k", "0", check=False)
        sh("umount", f"{WORK}/mnt", check=False)
        sh("umount", str(WORK), check=False)


if __name__ == "__main__":
    sys.exit(main())
