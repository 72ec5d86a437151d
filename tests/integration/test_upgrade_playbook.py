"""``playbooks/upgrade.yml`` for real: two agents on this machine upgraded one host at a time.

The inventory's two hosts are both this machine (``ansible_connection: local``), each with its own root under
/var/tmp, node id, service name (init script: no systemd here), sockets and file pool, as the sysvinit
scenario gives localhost: a real install on the same machine is never touched. ``playbooks/nodes.yml``
installs both from this checkout (linked as the collection); the new agent is a copy of the collection whose
pyproject.toml carries a bumped version (the agent role builds the wheel from the collection's own source,
and the agent reports that version in GetPluginInfo and in its "serving" log line).

Proved from the agents' own logs (one JSON line per event, millisecond times from one clock): each agent
stopped once and served once more, with the new version; host B's agent was stopped only after host A's new
agent had answered the role's Probe (without ``serial: 1`` both restarts come before either Probe). A failed
host stops the run: a configuration the agent's ``--check-config`` refuses, given to host A only, leaves both
agents running as they were and host B's install untouched. ``playbooks/uninstall.yml -e basalt_purge=true``
removes everything at the end, also when an assertion failed.
"""

from __future__ import annotations

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
import pytest

from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.proto import csi_pb2_grpc as rpc

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("upgrade-a", "upgrade-b")  # inventory order: serial takes them in this order
# What of the collection the roles and playbooks use (the agent's wheel is built from pyproject.toml,
# README.collection.md, agent/ and plugins/module_utils).
COLLECTION_PARTS = ("galaxy.yml", "meta", "roles", "playbooks", "plugins", "agent", "pyproject.toml",
                    "README.collection.md")
PROBE = "/csi.v1.Identity/Probe"


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

    def __init__(self, root: Path, collections: Path) -> None:
        self.root = root
        self.collections = collections
        self.suffix = root.name.rsplit("-", 1)[-1]
        self.vars: Dict[str, Dict[str, Any]] = {}
        for host in HOSTS:
            home = root / host
            (home / "lvm").mkdir(parents=True)
            self.vars[host] = {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "basalt_node_id": host,
                "basalt_kubelet_dir": f"{home}/kubelet",
                "basalt_state_dir": f"{home}/state",
                "basalt_agent_home": f"{home}/opt",
                "basalt_agent_config_dir": f"{home}/etc",
                "basalt_agent_log_file": f"{home}/agent.log",
                "basalt_agent_service_name": f"basalt-agent-{self.suffix}-{host}",
                # the packages are there (scripts/setup.sh); no kernel modules can be loaded here
                "basalt_host_install_packages": False,
                "basalt_host_load_modules": False,
                "basalt_host_lvm_local_conf": f"{home}/lvm/lvmlocal.conf",
            }

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
        pyproject = tree / "pyproject.toml"
        text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text(encoding="utf-8"),
                      count=1)
        pyproject.write_text(text, encoding="utf-8")
        return top

    def play(self, playbook: str, collection: Path, host_vars: Dict[str, Dict[str, Any]] | None = None,
             *extra: str) -> subprocess.CompletedProcess[str]:
        hosts = {host: {**self.vars[host], **(host_vars or {}).get(host, {})} for host in HOSTS}
        inventory = self.root / "inventory.json"
        inventory.write_text(json.dumps({"all": {"hosts": hosts, "children": {"k8s_cluster": {"children": {
            "kube_node": {"hosts": {host: {} for host in HOSTS}}}}}}}), encoding="utf-8")
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collection), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_LOCAL_TEMP=str(self.root / "ansible-tmp"), ANSIBLE_RETRY_FILES_ENABLED="0")
        proc = subprocess.run(["ansible-playbook", "-i", str(inventory), f"basalt.csi.{playbook}", *extra],
                              env=env, capture_output=True, text=True, timeout=900, check=False)
        print(proc.stdout + proc.stderr)
        return proc


def current_version() -> str:
    match = re.search(r'(?m)^version = "(.*)"$', (REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert match, "pyproject.toml names no version"
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


def remove_leftovers(site: Site) -> None:
    """After the uninstall playbook: whatever of the init scripts it could not remove (a failed run)."""
    for host in HOSTS:
        script = Path(f"/etc/init.d/{site.service(host)}")
        if script.exists():
            subprocess.run([str(script), "stop"], capture_output=True, timeout=120, check=False)
            subprocess.run(["update-rc.d", "-f", site.service(host), "remove"], capture_output=True, check=False)
            script.unlink()
        Path(f"/run/{site.service(host)}.pid").unlink(missing_ok=True)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    # under /var/tmp, not tmp_path: the sockets' paths must stay under the kernel's 108 bytes
    made = Site(Path(tempfile.mkdtemp(prefix="basalt-upg-", dir="/var/tmp")), tmp_path / "collections")
    try:
        yield made
    finally:
        made.play("uninstall", made.collection(current_version()), None, "-e", "basalt_purge=true")
        remove_leftovers(made)
        shutil.rmtree(made.root, ignore_errors=True)
        for host in HOSTS:
            assert not Path(f"/etc/init.d/{made.service(host)}").exists()
            assert not list(Path("/etc").glob(f"rc?.d/[SK]??{made.service(host)}"))


def test_upgrade_one_host_at_a_time_and_stop_at_a_failed_host(site: Site) -> None:
    old = current_version()
    new, refused = f"{old}.post1", f"{old}.post2"

    # (1) both hosts installed at the checkout's version, a volume on each
    proc = site.play("nodes", site.collection(old))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    kept = {host: create_volume(site, host) for host in HOSTS}
    before = {host: site.pid(host) for host in HOSTS}
    for host in HOSTS:
        assert plugin_version(site, host) == old

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
