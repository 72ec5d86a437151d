"""The shared role defaults (roles/defaults/defaults/main.yml) agree with the agent's own defaults.

The agent's constants are the one home of these facts; the roles keep a copy because Ansible reads
YAML, and this test guards it.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from role_vars import resolved

import basalt_agent
from basalt_agent import config

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = REPO / "roles" / "defaults" / "defaults" / "main.yml"
SPECS = REPO / "roles" / "defaults" / "meta" / "argument_specs.yml"


def test_role_defaults_are_the_agents_defaults() -> None:
    defaults = resolved(yaml.safe_load(DEFAULTS.read_text()), inventory_hostname="node-1")
    agent = config.Config()
    assert defaults["basalt_driver_name"] == basalt_agent.DRIVER_NAME
    assert defaults["basalt_topology_key"] == basalt_agent.TOPOLOGY_NODE_KEY
    assert defaults["basalt_state_dir"] == config.DEFAULT_STATE_DIR == agent.state_dir
    assert defaults["basalt_iscsi_base_iqn"] == agent.iscsi_base_iqn
    assert defaults["basalt_iscsi_initiator_base"] == agent.iscsi_initiator_base
    assert defaults["basalt_iscsi_backend"] == agent.iscsi_backend
    assert defaults["basalt_iscsi_portals"] == agent.iscsi_portals
    assert defaults["basalt_node_id"] == "node-1"
    assert defaults["basalt_pool"] == agent.pool_spec


def test_kubelet_paths_follow_the_driver_name_and_root() -> None:
    defaults = resolved(yaml.safe_load(DEFAULTS.read_text()), inventory_hostname="node-1")
    assert defaults["basalt_csi_socket"] == "/var/lib/kubelet/plugins/csi.basalt.dev/csi.sock"
    assert defaults["basalt_registration_socket"] == "/var/lib/kubelet/plugins_registry/csi.basalt.dev-reg.sock"
    moved = resolved({**yaml.safe_load(DEFAULTS.read_text()), "basalt_kubelet_dir": "/var/lib/k0s/kubelet"},
                     inventory_hostname="node-1")
    assert moved["basalt_csi_socket"] == "/var/lib/k0s/kubelet/plugins/csi.basalt.dev/csi.sock"


def test_argument_spec_documents_every_default_with_the_same_value() -> None:
    defaults = yaml.safe_load(DEFAULTS.read_text())
    options = yaml.safe_load(SPECS.read_text())["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults)
    for name, value in defaults.items():
        if name == "basalt_service_manager":  # found on the host: documented, no fixed default
            assert "default" not in options[name] and options[name]["choices"] == ["systemd", "sysvinit"]
            continue
        assert options[name]["default"] == value, name


def test_the_service_manager_is_found_without_gathering_facts() -> None:
    defaults = yaml.safe_load(DEFAULTS.read_text())
    host = {"inventory_hostname": "node-1"}
    assert resolved(defaults, **host)["basalt_service_manager"] == "systemd"
    no_systemd = {"basalt_systemd_dir": {"stat": {"exists": False}}}
    assert resolved(defaults, **host, **no_systemd)["basalt_service_manager"] == "sysvinit"
    gathered = {"ansible_facts": {"service_mgr": "sysvinit"}, "basalt_systemd_dir": {"skipped": True}}
    assert resolved(defaults, **host, **gathered)["basalt_service_manager"] == "sysvinit"


def _apt_tasks(tasks: object) -> list[dict[str, object]]:
    """Every ansible.builtin.apt task's arguments in a task list, blocks included."""
    found: list[dict[str, object]] = []
    for task in tasks if isinstance(tasks, list) else []:
        if isinstance(task, dict):
            found += [task[key] for key in ("ansible.builtin.apt", "apt") if isinstance(task.get(key), dict)]
            for key in ("block", "rescue", "always"):
                found += _apt_tasks(task.get(key))
    return found


def test_every_package_install_takes_the_shared_cache_valid_time() -> None:
    # one home for how fresh the package lists must be: no role keeps its own number
    installs = [(path.relative_to(REPO).as_posix(), task) for path in sorted((REPO / "roles").glob("*/tasks/*.yml"))
                for task in _apt_tasks(yaml.safe_load(path.read_text()))]
    assert {where.split("/")[1] for where, _ in installs} == {"host", "iscsi_target"}
    for where, task in installs:
        assert task.get("cache_valid_time") == "{{ basalt_package_cache_valid_time }}", where
    defaults = yaml.safe_load(DEFAULTS.read_text())
    assert defaults["basalt_package_cache_valid_time"] == 86400
