"""``molecule test -s sysvinit``: the roles on this machine kind (no systemd), against localhost.

The scenario (molecule/sysvinit) applies what of the host role applies here, the file pool and the agent
under its init script, all under a root and service name of the run's own (BASALT_MOLECULE_RUN: a new one
per run, so two runs at once never collide); verify checks the process, the 0600 sockets, Probe and a
volume walked through the agent; Molecule's idempotence and check steps require that a second converge and
a check-mode run change nothing; cleanup removes everything the run made, and nothing else: the machine's
own files where the roles write by default (its module list, multipath and LVM settings, initiator name,
a real install's agent) are byte for byte as they were. The collection is this checkout, linked: the
agent's wheel is built from a copy, so the checkout must come out unchanged.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import private_root
import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = ["syntax", "converge", "idempotence", "check", "verify", "cleanup"]  # molecule.yml's test_sequence


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (init script, loop devices, mounts)"
    for tool in ("molecule", "ansible-playbook", "start-stop-daemon", "update-rc.d"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/ansible-checks.sh installs molecule and ansible)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def _untracked_build_leftovers() -> list[str]:
    listed = subprocess.run(["git", "status", "--porcelain", "--ignored", "--", "build", "agent", "plugins"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    return [line for line in listed if "egg-info" in line or line.endswith("build/")]


def test_sysvinit_scenario(tmp_path: Path) -> None:
    before = _untracked_build_leftovers()
    machine = private_root.snapshot()
    run = f"molecule-{secrets.token_hex(4)}"
    settings = private_root.host_vars(basalt_molecule_run=run)
    root, service = Path(settings["basalt_molecule_root"]), settings["basalt_agent_service_name"]
    top = tmp_path / "collections"
    (top / "ansible_collections" / "basalt").mkdir(parents=True)
    (top / "ansible_collections" / "basalt" / "csi").symlink_to(REPO)
    env = private_root.play_environment(
        MOLECULE_GLOB="molecule/*/molecule.yml", BASALT_COLLECTIONS_PATH=str(top), BASALT_MOLECULE_RUN=run,
        MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
        ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    proc = subprocess.run(["molecule", "test", "-s", "sysvinit"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200, check=False)
    output = proc.stdout + proc.stderr
    print(output)
    # what cleanup left of the run's own (a failed run's too, removed below)
    left = private_root.service_files(service) + ([root] if root.exists() else [])
    if proc.returncode != 0:
        subprocess.run(["molecule", "cleanup", "-s", "sysvinit"], cwd=REPO, env=env, capture_output=True,
                       timeout=600, check=False)
    private_root.remove_leftovers(service)
    shutil.rmtree(root, ignore_errors=True)

    assert proc.returncode == 0, output[-6000:]
    for step in STEPS:
        assert f"sysvinit > {step}: Executed: Successful" in output, f"step {step} did not run"
    assert "read the same bytes back through the staging mount" in output  # verify's walk through the agent
    assert f"/etc/init.d/{service}" in output  # verify ran the run's own init script
    # cleanup removed the run's own: no agent, no init script, pid file or boot links, no root
    assert left == []
    # and nothing else: the machine's files where the roles write by default are as they were
    assert private_root.snapshot(since=machine) == machine
    # the agent's wheel was built from a copy: the collection tree gained no build/ or *.egg-info
    assert _untracked_build_leftovers() == before
