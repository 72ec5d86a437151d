"""The ``basalt`` operator command against a real agent and pool: listings, doctor and gc.

The command runs in this process (``basalt_agent.cli.main``) with the agent's own settings; leftovers
are made by hand on the pool the fixture made (file: under its directory; lvm-loop: in its private VG),
and gc must remove exactly those while the fixture's foreign LVs, a foreign file and a volume that a
record owns stay.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jmespath
import pytest
from basalt_csi_testlib import FILE_KIND, Agent, MiB, csi, exact, mount_cap, unique

from basalt_agent import cli
from basalt_core.losetup import list_devices
from basalt_core.model import CREATING, Volume, volume_id_for
from basalt_core.pool_factory import open_pool

README = Path(__file__).resolve().parents[2] / "README.md"


def basalt(capsys: pytest.CaptureFixture[str], agent: Agent, *args: str) -> tuple[int, Any]:
    """Run ``basalt ARGS`` with the agent's settings; JSON output parsed (``-o json`` is added)."""
    capsys.readouterr()
    status = cli.main([*args, "--endpoint", f"unix://{agent.socket}", *agent.command(), "-o", "json"])
    out = capsys.readouterr().out
    return status, json.loads(out) if out.strip() else None


def with_env(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's private LVM configuration, for the command running in this process."""
    for key, value in agent.env().items():
        if key.startswith("LVM_"):
            monkeypatch.setenv(key, value)


def make_volume(agent: Agent, size: int = 8 * MiB) -> Any:
    request = csi.CreateVolumeRequest(name=unique(), volume_capabilities=[mount_cap()], capacity_range=exact(size))
    return agent.ctl.CreateVolume(request).volume


def test_listings_are_the_same_from_the_agent_and_from_the_pool(fresh_agent_factory: Any, capsys: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    agent = fresh_agent_factory()
    with_env(agent, monkeypatch)
    first, second = make_volume(agent), make_volume(agent, 16 * MiB)
    snapshot = agent.ctl.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=first.volume_id,
                                                                   name=unique("snap"))).snapshot
    views = {}
    for via in ("agent", "pool"):
        status, listed = basalt(capsys, agent, "volumes", "list")
        assert status == 0
        _, snapshots = basalt(capsys, agent, "snapshots", "list")
        _, pools = basalt(capsys, agent, "pools", "list")
        _, shown = basalt(capsys, agent, "volumes", "show", second.volume_id)
        # a file pool shares its filesystem with everything else: its use moves between two reads
        views[via] = (listed, snapshots, shown, [{k: v for k, v in p.items()
                                                  if k not in ("allocated_bytes", "available_bytes")} for p in pools])
        assert [v["volume_id"] for v in listed] == [first.volume_id, second.volume_id]
        assert [v["capacity_bytes"] for v in listed] == [first.capacity_bytes, second.capacity_bytes]
        assert [s["snapshot_id"] for s in snapshots] == [snapshot.snapshot_id]
        assert snapshots[0]["source_volume_id"] == first.volume_id
        assert shown["volume_id"] == second.volume_id and shown["published_node_ids"] == []
        assert pools[0]["volumes"] == 2 and pools[0]["snapshots"] == 1
        assert agent.stop() == 0  # the second round reads the pool through the core
    assert views["agent"] == views["pool"]
    status, _ = basalt(capsys, agent, "volumes", "show", "vol-" + "0" * 32)
    assert status == 2


def readme_examples() -> list[str]:
    """The ``basalt ... --query`` lines of the README's operator section."""
    return re.findall(r"^basalt [^\n]*--query [^\n]*$", README.read_text(encoding="utf-8"), re.M)


def test_readme_query_examples(fresh_agent_factory: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = fresh_agent_factory()
    with_env(agent, monkeypatch)
    volumes = [make_volume(agent), make_volume(agent)]
    agent.ctl.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=volumes[0].volume_id, name=unique("s")))
    examples = readme_examples()
    assert len(examples) >= 4, examples
    for line in examples:
        words = shlex.split(line)[1:]
        query = words[words.index("--query") + 1]
        kind = words[0]
        status, answer = basalt(capsys, agent, *words)
        assert status in (0, 1), line  # doctor says 1 when it finds something (no kubelet here, say)
        plain = [w for i, w in enumerate(words)
                 if w not in ("--query", "-o") and (i == 0 or words[i - 1] not in ("--query", "-o"))]
        _, full = basalt(capsys, agent, *plain)  # the whole answer, queried here
        assert answer == jmespath.search(query, full), line
        if kind != "doctor":  # a healthy node has no findings to show
            assert answer not in (None, [], {}), f"{line}: the example shows nothing on a pool with volumes"
        if kind == "volumes" and "volume_id" in query:
            assert set(json.dumps(answer).split('"')) >= {v.volume_id for v in volumes}, line


def test_the_command_runs_as_a_program(fresh_agent_factory: Any) -> None:
    agent = fresh_agent_factory()
    volume = make_volume(agent)
    settings = ["--endpoint", f"unix://{agent.socket}", *agent.command()]
    answer = subprocess.run([sys.executable, "-m", "basalt_agent.cli", "volumes", "list", *settings],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **agent.env()})
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.splitlines()[0].split()[:2] == ["VOLUME", "CAPACITY"]
    assert volume.volume_id in answer.stdout


def test_the_command_takes_the_agents_config_file_and_csi_endpoint(fresh_agent_factory: Any, pool_kind: str,
                                                                     capsys: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's configuration file (its own setting names) and CSI_ENDPOINT point basalt at the node."""
    if pool_kind != FILE_KIND:
        pytest.skip("the settings do not depend on the pool")
    agent = fresh_agent_factory()
    volume = make_volume(agent)
    settings = tmp_path / "agent.toml"
    settings.write_text(f'node_id = "{agent.node_id}"\npool = "{agent.pool_spec}"\nstate_dir = "{agent.state_dir}"\n')
    monkeypatch.setenv("CSI_ENDPOINT", f"unix://{agent.socket}")
    capsys.readouterr()
    assert cli.main(["volumes", "list", "--config", str(settings), "-o", "json"]) == 0
    assert [v["volume_id"] for v in json.loads(capsys.readouterr().out)] == [volume.volume_id]
    cli.main(["doctor", "--config", str(settings), "--kubelet-root", str(tmp_path / "kubelet"), "-o", "json"])
    found = {f["check"]: (f["status"], f["what"]) for f in json.loads(capsys.readouterr().out)}
    assert found["agent"] == ("ok", f"the agent answers on {agent.socket} (mode 0600)")
    assert found["pool"][0] == "ok" and found["pool"][1].startswith(f"{agent.pool_spec} answers: 1 volume(s)")


def test_doctor_checks_leftovers_on_a_host_without_open_iscsi(fresh_agent_factory: Any, pool_kind: str, capsys: Any,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No iscsiadm: no sessions and no node records to look at, and the pool's leftovers are still found."""
    if pool_kind != FILE_KIND:
        pytest.skip("the iSCSI listings do not depend on the pool")
    agent = fresh_agent_factory()
    orphan = Path(agent.pool) / "volumes" / f"vol-{uuid.uuid4().hex}.img"
    orphan.write_bytes(b"")
    monkeypatch.setenv("PATH", str(path_without("iscsiadm", tmp_path / "bin")))
    status, findings = basalt(capsys, agent, "doctor", "--kubelet-root", str(tmp_path / "kubelet"))
    assert status == 1 and not [f for f in findings if f["status"] == "fail"], findings
    assert leftovers_of(findings) == [f"image {orphan}: no record owns it"]
    _, sessions = basalt(capsys, agent, "sessions", "list")
    assert sessions == []


def path_without(tool: str, bin_dir: Path) -> Path:
    """A directory with links to every command on PATH but *tool* (the first of each name, as PATH finds it)."""
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for entry in sorted(Path(directory).glob("*")) if os.path.isdir(directory) else []:
            link = bin_dir / entry.name
            if entry.name != tool and not link.exists() and os.access(entry, os.X_OK) and not entry.is_dir():
                link.symlink_to(entry.resolve())
    assert shutil.which(tool, path=str(bin_dir)) is None
    return bin_dir


def leftovers_of(findings: list[dict[str, Any]]) -> list[str]:
    return sorted(f["what"] for f in findings if f["safe_to_remove"])


def test_doctor_finds_the_leftovers_and_gc_removes_exactly_those(fresh_agent_factory: Any, pool_kind: str,
                                                                  capsys: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    agent = fresh_agent_factory()
    with_env(agent, monkeypatch)
    kept = make_volume(agent)
    # the pool as the agent sees it (LVM_SYSTEM_DIR set above)
    pool = open_pool(agent.pool_spec)
    # An interrupted creation, never retried (made after the agent's start-up clean-up, which runs in the
    # background once Probe answers and would remove it; before the mapping below, whose extents a later
    # LV would take).
    agent.wait_logged("start-up clean-up finished", 60)
    abandoned = Volume(volume_id_for(unique("abandoned")), "abandoned", 4 * MiB, pool.location, state=CREATING,
                       created_at=0.0)
    pool.save_volume(abandoned)
    gone, loops = file_pool_leftovers(agent) if pool_kind == FILE_KIND else lvm_pool_leftovers(agent)
    foreign_file = Path(agent.pool) / ("volumes" if pool_kind == FILE_KIND else "") / "notes.img"
    foreign_file.write_bytes(b"not Basalt's")

    status, findings = basalt(capsys, agent, "doctor", "--kubelet-root", str(tmp_path / "kubelet"))
    assert status == 1
    assert leftovers_of(findings) == sorted(gone), findings  # the abandoned creation is the running agent's
    assert any(abandoned.id in f["what"] and f["status"] == "warn" for f in findings)

    assert agent.stop() == 0
    gone = sorted([*gone, next(f["what"] for f in findings if abandoned.id in f["what"])])
    _, findings = basalt(capsys, agent, "doctor", "--kubelet-root", str(tmp_path / "kubelet"))
    assert leftovers_of(findings) == gone
    status, dry = basalt(capsys, agent, "gc", "--kubelet-root", str(tmp_path / "kubelet"))
    assert status == 0 and sorted(f["what"] for f in dry) == gone and {f["status"] for f in dry} == {"would remove"}
    assert still_attached(loops) == loops  # a dry run removes nothing

    status, removed = basalt(capsys, agent, "gc", "--apply", "--kubelet-root", str(tmp_path / "kubelet"))
    assert status == 0 and sorted(f["what"] for f in removed) == gone
    assert {f["status"] for f in removed} == {"removed"}
    _, findings = basalt(capsys, agent, "doctor", "--kubelet-root", str(tmp_path / "kubelet"))
    assert leftovers_of(findings) == []
    assert still_attached(loops) == []
    assert foreign_file.read_bytes() == b"not Basalt's"
    assert pool.load_volume(kept.volume_id) is not None and pool.load_volume(abandoned.id) is None
    # the fixture's teardown checks that the VG's foreign LVs (one named like Basalt's) and their data stayed


def test_a_leftover_loop_device_with_a_mounted_filesystem_stays(fresh_agent_factory: Any, pool_kind: str,
                                                                 capsys: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Real: ext4 made and mounted on a leftover loop device; doctor names it in use (and, file pool, the image
    under it), gc --apply leaves them and exits 1, removes the rest; unmounted, gc removes them too."""
    agent = fresh_agent_factory()
    with_env(agent, monkeypatch)
    gone, loops = file_pool_leftovers(agent) if pool_kind == FILE_KIND else lvm_pool_leftovers(agent)
    device = loops[0][0]
    held = [what for what in gone if what.startswith((f"loop device {device}:", "image "))]
    mount_point = tmp_path / "user"
    mount_point.mkdir()
    subprocess.run(["mkfs.ext4", "-q", device], check=True, timeout=60)
    subprocess.run(["mount", device, str(mount_point)], check=True, timeout=30)
    kubelet = ["--kubelet-root", str(tmp_path / "kubelet")]
    try:
        status, findings = basalt(capsys, agent, "doctor", *kubelet)
        in_use = {f["what"]: f["fix"] for f in findings if f["status"] == "in use"}
        assert status == 1 and sorted(in_use) == sorted(held)
        assert leftovers_of(findings) == sorted(set(gone) - set(held))
        loop_fix = next(fix for what, fix in in_use.items() if what.startswith("loop device"))
        assert loop_fix.startswith(f"in use: {device} is mounted on {mount_point}; find its user"), in_use

        status, done = basalt(capsys, agent, "gc", "--apply", *kubelet)
        assert status == 1 and sorted((f["status"], f["what"]) for f in done) == sorted(
            [("in use", what) for what in held] + [("removed", what) for what in set(gone) - set(held)])
        assert still_attached(loops) == loops[:1] and os.path.ismount(mount_point)
        if pool_kind == FILE_KIND:
            assert os.path.exists(loops[0][1]), "the image under the mounted loop device was removed"
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, timeout=30)
    status, done = basalt(capsys, agent, "gc", "--apply", *kubelet)
    assert status == 0 and sorted(f["what"] for f in done) == sorted(held) and still_attached(loops) == []


def still_attached(loops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Which of these (device, backing file) loops are still there (the numbers are reused by others)."""
    now = {(loop.device, loop.backing_file) for loop in list_devices()}
    return [loop for loop in loops if loop in now]


def file_pool_leftovers(agent: Agent) -> tuple[list[str], list[tuple[str, str]]]:
    """An image without a record with a loop device on it, and a loop device on a removed image."""
    orphan = Path(agent.pool) / "volumes" / f"vol-{uuid.uuid4().hex}.img"
    removed = Path(agent.pool) / "snapshots" / f"snap-{uuid.uuid4().hex}.img"
    for image in (orphan, removed):
        with open(image, "wb") as handle:
            handle.truncate(4 * MiB)
    loops = [(attach(str(orphan)), str(orphan)), (attach(str(removed)), f"{removed} (deleted)")]
    removed.unlink()
    return [f"image {orphan}: no record owns it",
            f"loop device {loops[0][0]}: attached to {orphan}, which no record owns",
            f"loop device {loops[1][0]}: attached to {removed} (deleted), which no record owns"], loops


def lvm_pool_leftovers(agent: Agent) -> tuple[list[str], list[tuple[str, str]]]:
    """A loop mapping (loop activation) left on the PV after its LV was removed."""
    vg = agent.lvm
    assert vg is not None and vg.device
    vg.run("lvcreate", "-an", "-Zn", "-y", "--alloc", "contiguous", "-n", "short-lived", "-L", "4m", vg.vg)
    offset, length = vg.lv_location("short-lived")
    device = attach(vg.device, "--offset", str(offset), "--sizelimit", str(length))
    vg.run("lvremove", "-y", f"{vg.vg}/short-lived")
    return [f"loop device {device}: maps {vg.device} at offset {offset}, where no LV of {vg.vg} lies"], \
        [(device, vg.device)]


def attach(path: str, *args: str) -> str:
    return subprocess.run(["losetup", "--find", "--show", *args, path], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_doctor_checks_the_kubelet_directories_and_reports_stale_mounts(fresh_agent_factory: Any, pool_kind: str,
                                                                        capsys: Any, tmp_path: Path) -> None:
    if pool_kind != FILE_KIND:
        pytest.skip("the kubelet checks do not depend on the pool")
    agent = fresh_agent_factory()
    kubelet = tmp_path / "kubelet"
    (kubelet / "plugins_registry").mkdir(parents=True)
    status, findings = basalt(capsys, agent, "doctor", "--kubelet-root", str(kubelet))
    failed = {f["what"] for f in findings if f["check"] == "kubelet" and f["status"] == "fail"}
    assert status == 1 and failed == {
        f"the plugin directory {kubelet}/plugins/csi.basalt.dev is missing",
        f"node not registered: nothing answers on {kubelet}/plugins_registry/csi.basalt.dev-reg.sock"}

    stale = kubelet / "plugins" / "kubernetes.io" / "csi" / "csi.basalt.dev" / "0123abcd" / "globalmount"
    stale.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "basalt-test", str(stale)], check=True, timeout=30)
    try:
        status, findings = basalt(capsys, agent, "doctor", "--kubelet-root", str(kubelet))
        mounts = [f for f in findings if f["check"] == "stale mounts"]
        assert [(f["status"], f["what"], f["safe_to_remove"]) for f in mounts] == [
            ("warn", f"{stale} (basalt-test) is mounted and no node record names it", False)]
        _, removed = basalt(capsys, agent, "gc", "--apply", "--kubelet-root", str(kubelet))
        assert removed == [] and os.path.ismount(stale)  # never unmounted by gc: a pod may use it
    finally:
        subprocess.run(["umount", str(stale)], check=True, timeout=30)
