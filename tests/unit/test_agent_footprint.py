"""What a resident agent holds: only the modules its configuration uses (issue 15: idle memory under 45 MiB).

Every module loaded stays in memory for the agent's life; bench/bench_agent.py measures the VmRSS this
keeps down. Here, in a fresh interpreter, the agent's own start-up path (settings, pool, metrics) loads
none of what a file pool that exports nothing never uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import basalt_agent

TREE = Path(__file__).resolve().parents[2]

# What main.serve() loads for `--pool file:DIR --metrics-address ...` before it serves, and what it then holds.
START = """
import json, sys
from basalt_agent import config, main
from basalt_agent.metrics import Metrics, probe_health
from basalt_core.pool_factory import open_pool

settings = config.from_args(config.parser().parse_args(sys.argv[1:]))
pool = open_pool(settings.pool_spec, config.given_pool_settings(settings), labels=config.pool_setting_labels())
metrics = Metrics(settings.node_id)
metrics.watch(pool)
health = probe_health(settings.socket_path)
print(json.dumps(sorted(sys.modules)))
"""

# Each only on the path that needs it: (module, who loads it when it is needed)
NOT_LOADED = [
    ("basalt_core.lvm", "an lvm or lvmthin pool"),
    ("basalt_core.lvm_pool", "an lvm pool"),
    ("basalt_core.lvmthin_pool", "an lvmthin pool"),
    ("basalt_core.tgt", "--iscsi-backend tgt"),
    ("basalt_core.lio", "--iscsi-backend lio"),
    ("basalt_agent.reconcile", "--iscsi-backend"),
    ("importlib.metadata", "nothing: the version is basalt_agent.__version__"),
    ("tomllib", "--config"),
    ("fractions", "parsing a size"),
    ("grpc._channel", "the first /healthz"),
]


def loaded_at_start(tmp_path: Path) -> set[str]:
    argv = ["--endpoint", f"unix://{tmp_path}/csi.sock", "--node-id", "n", "--pool", f"file:{tmp_path}/pool",
            "--state-dir", str(tmp_path / "state"), "--metrics-address", "127.0.0.1:9822"]
    result = subprocess.run([sys.executable, "-c", START, *argv], cwd=TREE, capture_output=True, text=True,
                            timeout=60, check=True)
    return set(json.loads(result.stdout))


def test_a_file_pool_agent_that_exports_nothing_loads_only_what_it_uses(tmp_path: Path) -> None:
    loaded = loaded_at_start(tmp_path)
    assert {"basalt_core.file_pool", "basalt_agent.metrics", "prometheus_client"} <= loaded  # it did start
    assert [(module, why) for module, why in NOT_LOADED if module in loaded] == []


def test_the_package_and_the_collection_carry_one_version() -> None:
    galaxy = (TREE / "galaxy.yml").read_text(encoding="utf-8")
    assert f"\nversion: {basalt_agent.__version__}\n" in galaxy
    assert 'version = {attr = "basalt_agent.__version__"}' in (TREE / "pyproject.toml").read_text(encoding="utf-8")
