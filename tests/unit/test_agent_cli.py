"""``basalt-agent --check-config`` and ``--probe``: what the agent role runs before and after a restart.

The probe runs against a real agent (file pool in a temp dir) over its socket.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from basalt_agent import main
from basalt_agent.launcher import AgentProcess

VALID = 'node_id = "node-1"\npool = "file:/srv/pool"\nworkers = 4\nthin_overprovision = 2\n' \
        'iscsi_portals = ["192.0.2.1:3260"]\nservices = "node"\n'


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> "tuple[int, str]":
    file = tmp_path / "agent.toml"
    file.write_text(text)
    rc = main.main(["--config", str(file), "--check-config"])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_check_config_accepts_valid_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = check(tmp_path, VALID, capsys)
    assert rc == 0, out
    assert "settings valid" in out and "node node-1" in out and "pool file:/srv/pool" in out
    assert "services identity,node" in out


@pytest.mark.parametrize(("text", "reason"), [
    ('node_id = "n"\nworkres = 4\n', "unknown settings workres"),
    ('workers = "4"\n', "workers = '4' is not of type int"),
    ("iscsi_require_chap = 1\n", "iscsi_require_chap = 1 is not of type bool"),
    ('iscsi_portals = "192.0.2.1:3260"\n', "is not of type list of str"),
    ('iscsi_initiators = {n1 = 5}\n', "is not of type dict of str, str"),
    ('endpoint = "tcp://0.0.0.0:1"\n', "must be unix:///absolute/path.sock"),
    ('node_id = "unterminated\n', "agent.toml: "),
    ('pool_capacity_limit = "10 parsecs"\n', "10 parsecs"),
])
def test_check_config_refuses_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              text: str, reason: str) -> None:
    rc, out = check(tmp_path, text, capsys)
    assert rc == 2 and reason in out, out


def test_check_config_names_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--config", str(tmp_path / "nowhere.toml"), "--check-config"]) == 2
    assert "nowhere.toml" in capsys.readouterr().err


def test_probe_answers_only_while_an_agent_serves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"unix://{tmp_path}/csi.sock"
    assert main.main(["--endpoint", endpoint, "--probe"]) == 1
    assert "does not answer Probe: UNAVAILABLE" in capsys.readouterr().err
    agent = AgentProcess(f"{tmp_path}/csi.sock", ["--node-id", "n1", "--state-dir", str(tmp_path / "state")],
                         log_path=str(tmp_path / "agent.log"))
    agent.start()
    try:
        deadline = time.monotonic() + 60
        while main.main(["--endpoint", endpoint, "--probe"]) != 0:
            assert agent.proc and agent.proc.poll() is None and time.monotonic() < deadline, agent.log_tail()
            time.sleep(0.2)
        assert f"{endpoint} ready" in capsys.readouterr().out
    finally:
        agent.stop(60)
    assert not os.path.exists(f"{tmp_path}/csi.sock")
    assert main.main(["--endpoint", endpoint, "--probe"]) == 1
