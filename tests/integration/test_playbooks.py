"""Real ``ansible-playbook`` runs of the basalt.csi modules against localhost (root, loop devices).

Each test gets a fresh ``/tmp/basalt-ansible-*`` root holding the file pool,
mount points and an fstab file; the collection is a temporary
``ansible_collections/basalt/csi`` link to this checkout. Teardown removes
only what lives under that root: mounts under it, loop devices whose backing
file is under it, then the directory.

- ``test_target``: the ansible-test targets under tests/integration/targets
  (each change in check mode, for real, and again); the driver also checks
  from the JSON output that every task named "... again" reported
  changed: false and every "... (check mode)" task changed: true.
- ``test_check_mode_changes_nothing``: a whole playbook of changes run with
  ``--check`` against a populated pool leaves the host byte-for-byte as it was.
- ``test_cross_face``: a real agent over its socket and the modules on the
  same pool see the same volumes and snapshots.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGETS = REPO / "tests" / "integration" / "targets"
MiB = 1 << 20


def _missing() -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root (loop devices, mkfs, mount)"
    if shutil.which("ansible-playbook") is None:
        return "ansible-playbook is not installed (scripts/ansible-checks.sh installs it)"
    if importlib.util.find_spec("ansible_collections.ansible.posix") is None:
        return "the ansible.posix collection (json callback) is not installed: pip install ansible"
    for tool in ("losetup", "blkid", "findmnt", "mkfs.ext4", "mkfs.xfs", "wipefs"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


# -- host state: what lives under a root ----------------------------------------

def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(root: str) -> List[Tuple[str, str, str, str]]:
    """(mount point, root within the source, fs type, options) of every mount under *root*, in order."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            left, _sep, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            mount_point = _unescape(fields[4])
            if _under(mount_point, root):
                found.append((mount_point, _unescape(fields[3]), rfields[0], fields[5]))
    return found


def loops_under(root: str) -> Dict[str, str]:
    """Loop device -> backing file, for backing files under *root*."""
    out = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], check=True,
                         capture_output=True, text=True).stdout
    devices = json.loads(out).get("loopdevices", []) if out.strip() else []
    found = {}
    for device in devices:
        backing = (device.get("back-file") or "").removesuffix(" (deleted)")
        if _under(backing, root):
            found[device["name"]] = backing
    return found


def host_state(root: str) -> Dict[str, Any]:
    """Everything under *root* a module could change: files, mounts, loop devices and what they hold."""
    loops = loops_under(root)
    files: Dict[str, Any] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if path in loops.values():
                # A mounted filesystem writes to its image by itself (ext4's lazy inode-table
                # initialisation, journal commits): compare what a module could change, the size.
                files[path] = (info.st_mode, info.st_size)
                continue
            digest = None
            if os.path.isfile(path) and not os.path.islink(path) and info.st_size <= MiB:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            files[path] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    probes = {dev: subprocess.run(["blkid", "--probe", "--output", "export", dev], capture_output=True,
                                  text=True, check=False).stdout for dev in loops}
    return dict(files=files, mounts=mounts_under(root), loops=loops, probes=probes)


def cleanup(root: str) -> None:
    """Remove what a test left under *root*, and only that."""
    for _round in range(3):
        pending = mounts_under(root)
        if not pending:
            break
        for mount_point, *_rest in sorted(pending, key=lambda m: m[0].count("/"), reverse=True):
            subprocess.run(["umount", mount_point], capture_output=True, check=False)
    for device in loops_under(root):
        subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)
    if mounts_under(root):
        print(f"integration cleanup: mounts left under {root}; not removing it", file=sys.stderr)
        return
    shutil.rmtree(root, ignore_errors=True)


# -- running playbooks ----------------------------------------------------------

@pytest.fixture(scope="module")
def collections_dir() -> Iterator[str]:
    """A temporary ``ansible_collections/basalt/csi`` that links to this checkout."""
    top = tempfile.mkdtemp(prefix="basalt-ansible-collections-")
    os.makedirs(os.path.join(top, "ansible_collections", "basalt"))
    os.symlink(REPO, os.path.join(top, "ansible_collections", "basalt", "csi"))
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def root() -> Iterator[str]:
    made = tempfile.mkdtemp(prefix="basalt-ansible-", dir="/tmp")
    try:
        yield made
    finally:
        cleanup(made)


class Playbook:
    def __init__(self, collections: str, root: str) -> None:
        self.collections = collections
        self.root = root
        self.scratch = tempfile.mkdtemp(prefix="basalt-ansible-run-")

    def run(self, plays: List[Dict[str, Any]], *, check: bool = False, extra: Optional[Dict[str, Any]] = None,
            name: str = "play") -> Dict[str, Any]:
        playbook = os.path.join(self.scratch, f"{name}.yml")
        with open(playbook, "w", encoding="utf-8") as handle:
            json.dump(plays, handle)  # JSON is YAML
        variables = dict(basalt_root=self.root, ansible_python_interpreter=sys.executable, **(extra or {}))
        env = dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=self.collections,
            ANSIBLE_ROLES_PATH=str(TARGETS),
            ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
            ANSIBLE_LOCAL_TEMP=os.path.join(self.scratch, "local"),
            ANSIBLE_REMOTE_TEMP=os.path.join(self.scratch, "remote"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_RETRY_FILES_ENABLED="0",
            ANSIBLE_FORCE_COLOR="0",
        )
        argv = ["ansible-playbook", "-i", "localhost,", "-c", "local", "-e", json.dumps(variables), playbook]
        if check:
            argv.append("--check")
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, check=False)
        try:
            output = json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"ansible-playbook printed no JSON (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n"
                        f"{proc.stderr[-4000:]}")
        failed = [(t["task"]["name"], h) for t in tasks(output) for h in t["hosts"].values() if h.get("failed")]
        stats = output["stats"]["localhost"]
        assert proc.returncode == 0 and stats["failures"] == 0 and stats["unreachable"] == 0, (
            f"ansible-playbook failed (rc={proc.returncode}): {json.dumps(failed, indent=1)[-6000:]}\n"
            f"{proc.stderr[-2000:]}"
        )
        return dict(output)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


@pytest.fixture
def playbook(collections_dir: str, root: str) -> Iterator[Playbook]:
    runner = Playbook(collections_dir, root)
    try:
        yield runner
    finally:
        runner.close()


def tasks(output: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [task for play in output["plays"] for task in play["tasks"]]


def result(output: Dict[str, Any], name: str) -> Dict[str, Any]:
    found = [t["hosts"]["localhost"] for t in tasks(output) if t["task"]["name"] == name]
    assert len(found) == 1, f"task {name!r} ran {len(found)} times"
    return dict(found[0])


def basalt_results(output: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """(task name, host result) of every basalt.csi module task, loop items separately."""
    found = []
    for task in tasks(output):
        host = task["hosts"].get("localhost", {})
        if not str(host.get("action", "")).startswith("basalt.csi."):
            continue
        for item in host.get("results", [host]):
            found.append((task["task"]["name"], item))
    return found


def play(*task_list: Dict[str, Any], roles: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    body: Dict[str, Any] = dict(name="Basalt integration", hosts="localhost", gather_facts=False)
    if roles:
        body["roles"] = roles
    else:
        body["tasks"] = list(task_list)
    return [body]


# -- the ansible-test targets ---------------------------------------------------

def check_target_run(output: Dict[str, Any], root: str) -> None:
    """Every "... again" task reported changed: false, every "... (check mode)" one changed: true; nothing left."""
    modules = basalt_results(output)
    assert modules, "no basalt.csi task ran"
    again = [(name, r["changed"]) for name, r in modules if " again" in name.lower()]
    checked = [(name, r["changed"]) for name, r in modules if "(check mode)" in name]
    assert again and all(not changed for _name, changed in again), again
    assert checked and all(changed for _name, changed in checked), checked
    assert mounts_under(root) == [] and loops_under(root) == {}


@pytest.mark.parametrize("target", ["volume", "snapshot", "mount", "attach"])
def test_target(playbook: Playbook, root: str, target: str) -> None:
    output = playbook.run(play(roles=[target]), name=target)
    check_target_run(output, root)


@pytest.fixture
def tgtd() -> Iterator[Any]:
    """A private tgtd on 127.0.0.1 (tests/iscsi/tgtd_testlib.py), stopped and its targets deleted afterwards."""
    missing = [tool for tool in ("tgtd", "tgtadm", "iscsi-inq") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (packages tgt and libiscsi-bin; scripts/setup.sh installs them)")
    sys.path.insert(0, str(REPO / "tests" / "iscsi"))
    from tgtd_testlib import start_tgtd

    daemon = start_tgtd()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_target_iscsi_export(playbook: Playbook, root: str, tgtd: Any) -> None:
    """The iscsi_export target against a real tgtd, proven with libiscsi's iscsi-inq as the initiators."""
    output = playbook.run(play(roles=["iscsi_export"]), name="iscsi_export",
                          extra=dict(basalt_tgt_control_port=tgtd.control_port, basalt_iscsi_portal=tgtd.portal))
    check_target_run(output, root)
    assert "Target " not in tgtd.show()


def test_target_iscsi_attach(playbook: Playbook, root: str) -> None:
    """The iscsi_attach target with the host's real iscsiadm (no kernel initiator here: see the target)."""
    if shutil.which("iscsiadm") is None:
        pytest.skip("needs iscsiadm (package open-iscsi; scripts/setup.sh installs it)")
    suffix = f"{os.getpid()}-{os.path.basename(root).lower().replace('_', '-')}"
    output = playbook.run(play(roles=["iscsi_attach"]), name="iscsi_attach", extra=dict(basalt_attach_suffix=suffix))
    check_target_run(output, root)


# -- AnsiballZ carries the core ----------------------------------------------------

def test_ansiballz_bundles_the_core(collections_dir: str, root: str, tmp_path: Path) -> None:
    """The payload holds every core file the module needs, relative imports included: no checkout on sys.path."""
    remote = tmp_path / "remote"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_dir, ANSIBLE_KEEP_REMOTE_FILES="1",
               ANSIBLE_REMOTE_TEMP=str(remote), ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"))
    args = f"name=bundled pool=file:{root}/pool state=absent"
    proc = subprocess.run(["ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "basalt.csi.volume",
                           "-a", args, "-e", f"ansible_python_interpreter={sys.executable}"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (payload,) = remote.glob("*/AnsiballZ_volume.py")
    subprocess.run([sys.executable, str(payload), "explode"], cwd=payload.parent, capture_output=True, check=True)
    core = payload.parent / "debug_dir" / "ansible_collections" / "basalt" / "csi" / "plugins" / "module_utils"
    bundled = {p.name for p in core.glob("*.py")}
    # volume.py imports volumes, pool, model, sizes, errors; pool.py imports file_pool inside a function,
    # and file_pool pulls in the tool wrappers through relative imports.
    assert {"volumes.py", "pool.py", "file_pool.py", "model.py", "sizes.py", "errors.py", "losetup.py",
            "imagefile.py", "atomicfile.py", "runner.py"} <= bundled, sorted(bundled)


# -- check mode leaves the host as it was -----------------------------------------

def _module(module: str, task_name: str, /, **args: Any) -> Dict[str, Any]:
    return {"name": task_name, f"basalt.csi.{module}": args}


def test_check_mode_changes_nothing(playbook: Playbook, root: str) -> None:
    pool = f"file:{root}/pool"
    fstab = f"{root}/fstab"
    setup = playbook.run(play(
        _module("volume", "Create the volumes", name="{{ item.name }}", pool=pool, size="{{ item.size }}")
        | {"loop": [{"name": "data", "size": "16Mi"}, {"name": "spare", "size": "8Mi"},
                    {"name": "blank", "size": "300Mi"}], "register": "made"},  # xfs's minimum: forced as xfs below
        {"name": "Attach data and blank", "ansible.builtin.command": "losetup --find --show --nooverlap {{ item }}",
         "loop": ["{{ made.results[0].volume.path }}", "{{ made.results[2].volume.path }}"], "changed_when": True},
        _module("snapshot", "Snapshot data", name="snap", pool=pool, volume_name="data"),
        {"name": "Write an fstab", "ansible.builtin.copy": {"dest": fstab, "content": "# fstab\n", "mode": "0644"}},
    ), name="setup")
    data_dev, blank_dev = (r["stdout"] for r in result(setup, "Attach data and blank")["results"])
    playbook.run(play(_module("mount", "Mount data", device=data_dev, path=f"{root}/mnt", fstab=True,
                              fstab_file=fstab)), name="mount")
    before = host_state(root)
    assert before["mounts"] and len(before["loops"]) == 2

    changes = playbook.run(play(
        _module("volume", "Grow data", name="data", pool=pool, size="32Mi"),
        _module("volume", "Create another", name="new", pool=pool, size="8Mi"),
        _module("volume", "Delete spare", name="spare", pool=pool, state="absent"),
        _module("volume", "Clone data", name="clone", pool=pool, size="16Mi",
                source_volume=setup_volume_id(setup, "data")),
        _module("snapshot", "Delete the snapshot", name="snap", pool=pool, state="absent"),
        _module("snapshot", "Snapshot spare", name="snap2", pool=pool, volume_name="spare"),
        _module("mount", "Mount the blank device", device=blank_dev, path=f"{root}/mnt2", fstab=True,
                fstab_file=fstab),
        _module("mount", "Mount the blank device as xfs, forced", device=blank_dev, path=f"{root}/mnt3",
                fstype="xfs", force=True),
        _module("mount", "Bind data elsewhere", src=f"{root}/mnt", path=f"{root}/bind", bind=True, readonly=True),
        _module("mount", "Unmount data", path=f"{root}/mnt", state="unmounted"),
        _module("mount", "Remove data's mount and fstab line", path=f"{root}/mnt", state="absent", fstab=True,
                fstab_file=fstab),
    ), check=True, name="changes")
    results = basalt_results(changes)
    assert len(results) == 11 and all(r["changed"] for _name, r in results), [(n, r["changed"]) for n, r in results]
    after = host_state(root)
    changed = {p: (before["files"].get(p), after["files"].get(p)) for p in set(before["files"]) | set(after["files"])
               if before["files"].get(p) != after["files"].get(p)}
    assert changed == {}
    assert after == before

    # The same, for real, changes the host: check mode was not simply a no-op.
    playbook.run(play(_module("volume", "Grow data", name="data", pool=pool, size="32Mi")), name="real")
    assert host_state(root)["files"] != before["files"]


def test_check_mode_on_a_missing_pool_creates_nothing(playbook: Playbook, root: str) -> None:
    """A file pool that does not exist yet reads as empty in check mode; its directories are not made."""
    pool_dir = f"{root}/pool-to-be"
    output = playbook.run(play(
        _module("volume", "Create a volume", name="data", pool=f"file:{pool_dir}", size="8Mi"),
        _module("volume", "Delete a volume", name="data", pool=f"file:{pool_dir}", state="absent"),
        _module("snapshot", "Delete a snapshot", name="snap", pool=f"file:{pool_dir}", state="absent"),
    ), check=True, name="missing-pool")
    assert [r["changed"] for _name, r in basalt_results(output)] == [True, False, False]
    assert result(output, "Create a volume")["volume"]["size"] == 8 * MiB
    assert not os.path.exists(pool_dir)


def setup_volume_id(output: Dict[str, Any], name: str) -> str:
    for item in result(output, "Create the volumes")["results"]:
        if item["volume"]["name"] == name:
            return str(item["volume"]["id"])
    raise AssertionError(f"no volume {name} in the setup output")


# -- the CSI agent and the modules on one pool ---------------------------------------

class Agent:
    """The agent on the test's pool (its file pool unless given another; basalt_agent.launcher), and a
    controller stub once it answers Probe."""

    def __init__(self, root: str, *extra: str, pool: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        from basalt_agent.launcher import AgentProcess

        self.process = AgentProcess(
            os.path.join(root, "csi.sock"),
            ["--node-id", "n1", "--pool", pool or f"file:{root}/pool", "--state-dir", f"{root}/state", *extra],
            log_path=os.path.join(root, "agent.log"), cwd=root, env=env)
        self.channel: Any = None

    @property
    def argv(self) -> List[str]:
        return self.process.argv

    def start(self) -> Any:
        import grpc

        from basalt_agent.launcher import AgentFailed
        from basalt_agent.proto import csi_pb2_grpc

        self.process.start()
        try:
            self.process.wait_ready()
        except AgentFailed as failure:
            self.process.stop()
            pytest.fail(str(failure))
        self.channel = grpc.insecure_channel(f"unix://{self.process.socket_path}")
        return csi_pb2_grpc.ControllerStub(self.channel)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.process.stop()


@pytest.fixture
def controller(root: str) -> Iterator[Any]:
    pytest.importorskip("grpc")
    agent = Agent(root)
    try:
        yield agent.start()
    finally:
        agent.stop()


def _volume_ids(controller: Any) -> Dict[str, int]:
    from basalt_agent.proto import csi_pb2

    entries = controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30).entries
    return {e.volume.volume_id: e.volume.capacity_bytes for e in entries}


def test_cross_face(playbook: Playbook, root: str, controller: Any) -> None:
    from basalt_agent.proto import csi_pb2

    pool = f"file:{root}/pool"
    made = playbook.run(play(_module("volume", "Create from Ansible", name="from ansible ✓", pool=pool,
                                     size="8Mi")), name="create")
    volume = result(made, "Create from Ansible")["volume"]
    assert _volume_ids(controller) == {volume["id"]: 8 * MiB}

    capability = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )
    created = controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name="pvc-from-csi", volume_capabilities=[capability],
        capacity_range=csi_pb2.CapacityRange(required_bytes=16 * MiB, limit_bytes=16 * MiB)), timeout=60).volume
    assert set(_volume_ids(controller)) == {volume["id"], created.volume_id}

    output = playbook.run(play(
        _module("volume", "See the CSI volume", name="pvc-from-csi", pool=pool, size="16Mi"),
        _module("snapshot", "Snapshot the CSI volume", name="csi-snap", pool=pool, volume_id=created.volume_id),
        _module("snapshot", "Snapshot the CSI volume again", name="csi-snap", pool=pool,
                volume_id=created.volume_id),
    ), name="snapshot")
    seen = result(output, "See the CSI volume")
    assert not seen["changed"] and seen["volume"]["id"] == created.volume_id
    snap = result(output, "Snapshot the CSI volume")
    assert snap["changed"] and not result(output, "Snapshot the CSI volume again")["changed"]
    listed = controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(), timeout=30).entries
    assert [(e.snapshot.snapshot_id, e.snapshot.source_volume_id) for e in listed] == [
        (snap["snapshot"]["id"], created.volume_id)]

    output = playbook.run(play(
        _module("snapshot", "Delete the snapshot", name="csi-snap", pool=pool, state="absent"),
        _module("volume", "Delete the CSI volume", name="pvc-from-csi", pool=pool, state="absent"),
        _module("volume", "Delete the Ansible volume", name="from ansible ✓", pool=pool, state="absent"),
    ), name="delete")
    assert all(r["changed"] for _name, r in basalt_results(output))
    assert _volume_ids(controller) == {}
    assert list(controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(), timeout=30).entries) == []


def test_a_playbook_and_an_agent_on_one_pool_report_the_same_capacity(playbook: Playbook, root: str) -> None:
    """The pool module stores the pool's settings with it; the volume module and the agent read them there."""
    pytest.importorskip("grpc")
    from basalt_agent.proto import csi_pb2

    pool = f"file:{root}/pool"
    output = playbook.run(play(
        _module("pool", "Make the pool", pool=pool, capacity_limit="64Mi"),
        _module("volume", "A volume in it", name="v", pool=pool, size="8Mi"),
        _module("pool", "Make the pool again", pool=pool),
    ), name="pool")
    made, again = result(output, "Make the pool"), result(output, "Make the pool again")
    assert made["changed"] and not again["changed"]
    assert again["pool"]["settings"] == {"capacity_limit": 64 * MiB} and again["pool"]["volumes"] == 1
    assert again["pool"]["available_bytes"] == 56 * MiB

    agent = Agent(root)  # given no capacity flag: the stored limit applies
    try:
        controller = agent.start()
        capacity = controller.GetCapacity(csi_pb2.GetCapacityRequest(), timeout=30).available_capacity
    finally:
        agent.stop()
    assert capacity == again["pool"]["available_bytes"]

    refused = subprocess.run(Agent(root, "--pool-capacity-limit", "32Mi").argv, capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert refused.returncode == 1
    assert "--pool-capacity-limit 33554432 (stored: 67108864)" in refused.stderr


def test_pool_module_makes_an_lvm_pool_on_blank_disks_and_removes_it(playbook: Playbook, root: str) -> None:
    """basalt.csi.pool through ansible-playbook on two loop disks of the test's own, LVM seeing only them; the
    agent opening the pool reports the capacity the module does."""
    pytest.importorskip("grpc")
    from basalt_agent.proto import csi_pb2
    from basalt_core import lvm

    disks = []
    for index in range(2):
        image = os.path.join(root, f"disk{index}.img")
        with open(image, "wb") as handle:
            handle.truncate(64 * MiB)
        disks.append(subprocess.run(["losetup", "--find", "--show", image], check=True, capture_output=True,
                                    text=True).stdout.strip())
    system_dir = os.path.join(root, "lvm")
    os.mkdir(system_dir)
    Path(system_dir, "lvm.conf").write_text(lvm.isolated_config(disks) + "\n")
    env = {**os.environ, "LVM_SYSTEM_DIR": system_dir}
    vg = f"basalt-it-{os.getpid()}"
    pool = f"lvm:{vg}"
    make = _module("pool", "Make the pool", pool=pool, disks=disks, max_volumes=2000, allocation="contiguous",
                   activation="loop", capacity_limit="48Mi")
    try:
        def run(*task_list: Dict[str, Any], name: str, check: bool = False) -> Dict[str, Any]:
            plays = play(*task_list)
            plays[0]["environment"] = {"LVM_SYSTEM_DIR": system_dir}
            return playbook.run(plays, check=check, name=name)

        checked = result(run(dict(make, name="Make the pool (check mode)"), name="check", check=True),
                         "Make the pool (check mode)")
        assert checked["changed"] and checked["pool"]["exists"]  # as it would be
        assert vg not in subprocess.run(["vgs", "--noheadings", "-o", "vg_name"], env=env, capture_output=True,
                                        text=True, check=True).stdout
        output = run(make, _module("volume", "A volume in it", name="v", pool=pool, size="8Mi"),
                     dict(make, name="Make the pool again"), name="make")
        made, again = result(output, "Make the pool"), result(output, "Make the pool again")
        assert made["changed"] and "8 MiB of metadata" in made["actions"][0] and not again["changed"]
        assert again["pool"]["disks"] == sorted(disks) and again["pool"]["available_bytes"] == 40 * MiB
        assert again["pool"]["settings"]["alloc"] == "contiguous"
        assert result(output, "A volume in it")["changed"]

        # The agent given no LVM flags reads the settings the module stored in the VG's tags (activation
        # loop, the 48 MiB limit): both faces report the same capacity.
        agent = Agent(root, pool=pool, env={**os.environ, "LVM_SYSTEM_DIR": system_dir})
        try:
            capacity = agent.start().GetCapacity(csi_pb2.GetCapacityRequest(), timeout=30).available_capacity
        finally:
            agent.stop()
        assert capacity == again["pool"]["available_bytes"]

        removed = result(run(_module("pool", "Remove the pool", pool=pool, state="absent", force=True),
                             name="remove"), "Remove the pool")
        assert removed["changed"] and not removed["pool"]["exists"]
        assert subprocess.run(["pvs", "--noheadings", "-o", "pv_name"], env=env, capture_output=True,
                              text=True, check=True).stdout.split() == []
    finally:
        subprocess.run(["vgremove", "-ff", "-y", vg], env=env, capture_output=True, check=False)
        for disk in disks:
            subprocess.run(["pvremove", "-ff", "-y", disk], env=env, capture_output=True, check=False)
