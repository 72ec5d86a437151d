"""The node, storage and upgrade playbooks for real on "hosts" that are all this machine.

Each inventory host is this machine (``ansible_connection: local``) with its own root under /var/tmp, node id,
service name (init script: no systemd here), sockets, file pool and host-role files: the sysvinit scenario's
settings (tests/integration/private_root.py), so a real install on the same machine is never touched. The
collection is this checkout, linked; ``playbooks/uninstall.yml -e basalt_purge=true`` removes everything at
the end, also when an assertion failed, and the machine's own files are as they were.

``upgrade.yml``: ``playbooks/nodes.yml`` installs two hosts; the new agent is a copy of the collection whose
pyproject.toml carries a bumped version (the agent role builds the wheel from the collection's own source,
and the agent reports that version in GetPluginInfo and in its "serving" log line). Proved from the agents'
own logs (one JSON line per event, millisecond times from one clock): each agent stopped once and served
once more, with the new version; host B's agent was stopped only after host A's new agent had answered the
role's Probe (without ``serial: 1`` both restarts come before either Probe). A failed host stops the run: a
configuration the agent's ``--check-config`` refuses, given to host A only, leaves both agents running as
they were and host B's install untouched.

``storage.yml``: a storage host whose tgt is the test's private tgtd (the machine's tgt service is shared:
the role's install and service tasks are off); a second run changes nothing; the installed agent exports a
volume to one node's derived initiator name with CHAP.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List

import grpc
import private_root
import pytest
import test_playbooks  # the sibling suite, for its private-tgtd fixture

from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.proto import csi_pb2_grpc as rpc

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("upgrade-a", "upgrade-b")  # inventory order: serial takes them in this order
# What of the collection the roles and playbooks use (the agent's wheel is built from pyproject.toml,
# README.collection.md, agent/ and plugins/module_utils).
COLLECTION_PARTS = ("galaxy.yml", "meta", "roles", "playbooks", "plugins", "agent", "pyproject.toml",
                    "README.collection.md")
PROBE = "/csi.v1.Identity/Probe"
VERSION_HOME = "agent/basalt_agent/__init__.py"  # the agent's version (pyproject.toml reads it at build time)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (init scripts under /etc/init.d, pid files under /run)"
    for tool in ("ansible-playbook", "start-stop-daemon", "update-rc.d"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/ansible-checks.sh installs ansible)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


class Site:
    """The two hosts' paths and names, the inventory and the playbook runs."""

    def __init__(self, root: Path, collections: Path, groups: Dict[str, str]) -> None:
        self.root = root
        self.collections = collections
        self.groups = groups  # host -> its inventory group (kube_node or basalt_storage), in inventory order
        self.suffix = root.name.rsplit("-", 1)[-1]
        self.vars: Dict[str, Dict[str, Any]] = {}
        for host in groups:
            # the sysvinit scenario's settings, each host under its own root and with its own service name
            settings = private_root.host_vars(basalt_molecule_run=f"{self.suffix}-{host}",
                                              basalt_molecule_root=str(root / host), basalt_node_id=host)
            Path(settings["basalt_host_lvm_local_conf"]).parent.mkdir(parents=True)
            self.vars[host] = {"ansible_connection": "local",
                               "ansible_python_interpreter": "{{ ansible_playbook_python }}", **settings}

    def service(self, host: str) -> str:
        return str(self.vars[host]["basalt_agent_service_name"])

    def socket(self, host: str) -> str:
        return f"unix://{self.vars[host]['basalt_kubelet_dir']}/plugins/csi.basalt.dev/csi.sock"

    def pid(self, host: str) -> int:
        return int(Path(f"/run/{self.service(host)}.pid").read_text(encoding="utf-8"))

    def log(self, host: str) -> List[Dict[str, Any]]:
        text = Path(self.vars[host]["basalt_agent_log_file"]).read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def wheels(self, host: str) -> List[str]:
        return sorted(path.name for path in Path(self.vars[host]["basalt_agent_home"], "dist").glob("*.whl"))

    def collection(self, version: str) -> Path:
        """A collection path holding this checkout as basalt.csi, its agent at *version*."""
        top = self.collections / version
        tree = top / "ansible_collections" / "basalt" / "csi"
        if tree.exists():
            return top
        tree.parent.mkdir(parents=True)
        if version == current_version():
            tree.symlink_to(REPO)
            return top
        tree.mkdir()
        for part in COLLECTION_PARTS:
            source = REPO / part
            if source.is_dir():
                shutil.copytree(source, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
            elif source.exists():
                shutil.copy2(source, tree / part)
        package = tree / VERSION_HOME
        text = re.sub(r'(?m)^__version__ = ".*"$', f'__version__ = "{version}"', package.read_text(encoding="utf-8"),
                      count=1)
        package.write_text(text, encoding="utf-8")
        return top

    def play(self, playbook: str, collection: Path, host_vars: Dict[str, Dict[str, Any]] | None = None,
             *extra: str) -> subprocess.CompletedProcess[str]:
        hosts = {host: {**self.vars[host], **(host_vars or {}).get(host, {})} for host in self.groups}
        members: Dict[str, Dict[str, Any]] = {
            group: {"hosts": {host: {} for host, member_of in self.groups.items() if member_of == group}}
            for group in ("kube_node", "basalt_storage")}
        inventory = self.root / "inventory.json"
        inventory.write_text(json.dumps({"all": {"hosts": hosts, "children": {
            "k8s_cluster": {"children": {"kube_node": members["kube_node"]}},
            "basalt_storage": members["basalt_storage"]}}}), encoding="utf-8")
        env = private_root.play_environment(
            ANSIBLE_COLLECTIONS_PATH=str(collection), ANSIBLE_NOCOLOR="1",
            ANSIBLE_LOCAL_TEMP=str(self.root / "ansible-tmp"), ANSIBLE_RETRY_FILES_ENABLED="0")
        proc = subprocess.run(["ansible-playbook", "-i", str(inventory), f"basalt.csi.{playbook}", *extra],
                              env=env, capture_output=True, text=True, timeout=900, check=False)
        print(proc.stdout + proc.stderr)
        return proc


def current_version() -> str:
    match = re.search(r'(?m)^__version__ = "(.*)"$', (REPO / VERSION_HOME).read_text(encoding="utf-8"))
    assert match, f"{VERSION_HOME} names no __version__"
    return match.group(1)


def when(entry: Dict[str, Any]) -> datetime:
    return datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ")


def plugin_version(site: Site, host: str) -> str:
    with grpc.insecure_channel(site.socket(host)) as channel:
        identity = rpc.IdentityStub(channel)
        assert identity.Probe(csi.ProbeRequest(), timeout=30).ready.value
        return str(identity.GetPluginInfo(csi.GetPluginInfoRequest(), timeout=30).vendor_version)


def volumes(site: Site, host: str) -> List[str]:
    with grpc.insecure_channel(site.socket(host)) as channel:
        listed = rpc.ControllerStub(channel).ListVolumes(csi.ListVolumesRequest(), timeout=60)
        return sorted(entry.volume.volume_id for entry in listed.entries)


def create_volume(site: Site, host: str) -> str:
    mode = csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
    cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=mode)
    with grpc.insecure_channel(site.socket(host)) as channel:
        return str(rpc.ControllerStub(channel).CreateVolume(csi.CreateVolumeRequest(
            name=f"kept-{host}", volume_capabilities=[cap], capacity_range=csi.CapacityRange(required_bytes=8 << 20)),
            timeout=60).volume.volume_id)


@contextlib.contextmanager
def local_site(tmp_path: Path, groups: Dict[str, str]) -> Iterator[Site]:
    """The hosts' roots under /var/tmp, and at the end the uninstall playbook with purge, whatever happened."""
    # under /var/tmp, not tmp_path: the sockets' paths must stay under the kernel's 108 bytes
    made = Site(Path(tempfile.mkdtemp(prefix="basalt-upg-", dir="/var/tmp")), tmp_path / "collections", groups)
    machine = private_root.snapshot()
    try:
        yield made
    finally:
        made.play("uninstall", made.collection(current_version()), None, "-e", "basalt_purge=true")
        left = {host: private_root.service_files(made.service(host)) for host in groups}
        for host in groups:
            private_root.remove_leftovers(made.service(host))  # what a failed uninstall could not remove
        shutil.rmtree(made.root, ignore_errors=True)
        assert not any(left.values()), left
        assert private_root.snapshot(since=machine) == machine  # the machine's own files as they were


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with local_site(tmp_path, {host: "kube_node" for host in HOSTS}) as made:
        yield made


def test_upgrade_one_host_at_a_time_and_stop_at_a_failed_host(site: Site) -> None:
    old = current_version()
    new, refused = f"{old}.post1", f"{old}.post2"

    # (0) a check run on fresh hosts: it passes (a service that the run would install is not asked about) and
    # leaves nothing of Basalt
    proc = site.play("nodes", site.collection(old), None, "--check")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert not any(private_root.service_files(site.service(host)) for host in HOSTS)
    assert not any(Path(site.vars[host]["basalt_agent_home"]).exists() for host in HOSTS)

    # (1) both hosts installed at the checkout's version, a volume on each
    proc = site.play("nodes", site.collection(old))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    kept = {host: create_volume(site, host) for host in HOSTS}
    before = {host: site.pid(host) for host in HOSTS}
    for host in HOSTS:
        assert plugin_version(site, host) == old
        # the service runs the agent in the role's environment (PYTHONOPTIMIZE=2: its idle memory)
        environ = Path(f"/proc/{before[host]}/environ").read_bytes().split(b"\0")
        assert b"PYTHONOPTIMIZE=2" in environ, environ

    # (2) the upgrade to a new agent version
    proc = site.play("upgrade", site.collection(new))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    probed = {}
    for host in HOSTS:
        assert site.pid(host) != before[host] and Path(f"/proc/{site.pid(host)}").exists()
        assert plugin_version(site, host) == new
        assert kept[host] in volumes(site, host)
        log = site.log(host)
        # exactly one restart: one stop, then one more start, at the new version
        assert [entry["msg"] for entry in log if entry["msg"] in ("serving", "stopping: finishing in-flight calls")
                ] == ["serving", "stopping: finishing in-flight calls", "serving"], log
        served = [index for index, entry in enumerate(log) if entry["msg"] == "serving"]
        assert [log[index]["version"] for index in served] == [old, new]
        stopped = next(entry for entry in log if entry["msg"].startswith("stopping"))
        # the role's Probe of the new agent (the first Probe it answered)
        first_probe = next(entry for entry in log[served[1]:] if entry.get("method") == PROBE and entry["code"] == "OK")
        probed[host] = (when(stopped), when(first_probe))
        assert site.wheels(host) == [f"basalt_csi-{new}-py3-none-any.whl"]
    # one host at a time: B's agent was stopped only after A's new agent had answered Probe
    assert probed["upgrade-b"][0] > probed["upgrade-a"][1], probed

    # (3) a configuration host A's agent refuses: the run stops at A, and B is never touched
    pids = {host: site.pid(host) for host in HOSTS}
    lines = {host: len(site.log(host)) for host in HOSTS}
    refusing = {"upgrade-a": {"basalt_agent_settings": {"no_such_setting": 1}}}
    proc = site.play("upgrade", site.collection(refused), refusing)
    assert proc.returncode != 0, proc.stdout[-6000:]
    assert "unknown settings no_such_setting" in proc.stdout, proc.stdout[-6000:]
    for host in HOSTS:
        assert site.pid(host) == pids[host]  # not restarted
        assert plugin_version(site, host) == new
        assert not [entry for entry in site.log(host)[lines[host]:] if entry["msg"] != "rpc"]
        assert kept[host] in volumes(site, host)
    assert site.wheels("upgrade-b") == [f"basalt_csi-{new}-py3-none-any.whl"]  # B's install untouched
    assert "upgrade-b" not in proc.stdout.split("PLAY RECAP")[0]


# A private tgtd on 127.0.0.1, stopped with its targets afterwards: the machine's own tgt service is left alone.
tgtd = test_playbooks.tgtd


def test_storage_playbook_runs_an_agent_that_exports_through_tgt(tmp_path: Path, tgtd: Any) -> None:
    initiator_base = "iqn.2026-11.dev.basalt.test"
    with local_site(tmp_path, {"storage-s": "basalt_storage"}) as site:
        root = Path(site.vars["storage-s"]["basalt_agent_home"]).parent
        target = {"storage-s": {
            "basalt_iscsi_backend": "tgt", "basalt_iscsi_portals": [tgtd.portal],
            "basalt_iscsi_initiator_base": initiator_base,
            "basalt_iscsi_target_install_packages": False, "basalt_iscsi_target_manage_services": False,
            "basalt_agent_settings": {"tgt_control_port": tgtd.control_port, "tgt_conf": f"{root}/tgt-basalt.conf"}}}
        collection = site.collection(current_version())
        # A check run on a fresh host that would install the LIO target, multipath and the initiator (not
        # installed on this machine kind): it passes, as a service that the run would install is not asked
        # about, and leaves nothing of Basalt.
        fresh = {"storage-s": {
            **target["storage-s"], "basalt_iscsi_backend": "lio", "basalt_iscsi_target_install_packages": True,
            "basalt_iscsi_target_manage_services": True, "basalt_host_install_packages": True,
            "basalt_host_iscsi_initiator": True, "basalt_host_manage_services": True}}
        proc = site.play("storage", collection, fresh, "--check")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert not private_root.service_files(site.service("storage-s"))
        assert not Path(site.vars["storage-s"]["basalt_agent_home"]).exists()
        proc = site.play("storage", collection, target)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        again = site.play("storage", collection, target)
        unchanged = re.search(r"storage-s\s+: ok=\d+\s+changed=0 ", again.stdout)
        assert again.returncode == 0 and unchanged, again.stdout[-4000:]
        assert plugin_version(site, "storage-s") == current_version()

        mode = csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
        cap = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=mode)
        with grpc.insecure_channel(site.socket("storage-s")) as channel:
            controller = rpc.ControllerStub(channel)
            volume = controller.CreateVolume(csi.CreateVolumeRequest(
                name="exported", volume_capabilities=[cap], capacity_range=csi.CapacityRange(required_bytes=8 << 20)),
                timeout=60).volume
            published = controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
                volume_id=volume.volume_id, node_id="worker-1", volume_capability=cap,
                secrets={"node.session.auth.username": "worker-1", "node.session.auth.password": "Secret-Of-W1-1234"}),
                timeout=120)
            shown = tgtd.show()
            # the node's own IQN in the target's ACL, its CHAP account bound, the role's portal handed to it
            assert f"{initiator_base}:worker-1" in shown and "Account information:\n        worker-1" in shown, shown
            assert tgtd.portal in published.publish_context.values(), published.publish_context
            controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
                volume_id=volume.volume_id, node_id="worker-1"), timeout=120)
            assert f"{initiator_base}:worker-1" not in tgtd.show()
            controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)
