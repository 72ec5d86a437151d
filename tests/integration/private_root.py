"""Hosts that are all this machine, each under a root of its own, and the machine's files they must not touch.

molecule/sysvinit/group_vars/all.yml is the one home of the role variables that put a host under a private
root (every path the roles write, the agent's service name); the playbook tests give each of their hosts the
same settings, resolved here for their own root and name.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml
import zip_bytecode_site
from role_vars import resolved

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "molecule" / "sysvinit" / "group_vars" / "all.yml"
ROLES = REPO / "roles"


def play_environment(**extra: str) -> Dict[str, str]:
    """The environment for a run whose init scripts start agents (they inherit it): this one's with none of
    tests/conftest.py's PYTHONPATH but its zip bytecode cache, so the agents run their virtualenv's code (the
    install under test), not this checkout's; plus *extra*."""
    kept = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    return {**kept, "PYTHONPATH": zip_bytecode_site.SITE, **extra}


def _settings() -> Dict[str, Any]:
    return dict(yaml.safe_load(SETTINGS.read_text(encoding="utf-8")))


def host_vars(**own: Any) -> Dict[str, Any]:
    """The scenario's settings, their values resolved, for *own* run (basalt_molecule_run, and the root or
    node id to override)."""
    settings = _settings()
    return resolved({**{name: value for name, value in settings.items() if name not in own}, **own})


def _role_defaults() -> Dict[str, Any]:
    defaults: Dict[str, Any] = {}
    for role in ("defaults", "host", "agent"):
        defaults.update(yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text(encoding="utf-8")))
    return defaults


def _default_service_files() -> Dict[str, Any]:
    """The default service's init script and pid file (the agent role's vars, for its default service name)."""
    agent_vars = yaml.safe_load((ROLES / "agent" / "vars" / "main.yml").read_text(encoding="utf-8"))
    service_files = ("basalt_agent_init_script", "basalt_agent_pid_file")
    return dict(resolved({"basalt_agent_service_name": _role_defaults()["basalt_agent_service_name"],
                          **{name: agent_vars[name] for name in service_files}}))


def machine_paths() -> list[Path]:
    """Where the roles write by default: the machine's own files and directories (the roles' defaults that
    are paths), and the default service's init script and pid file. Read from the roles, not from the
    settings: a setting left out must not leave its default path out of the comparison."""
    paths = [value for value in [*_role_defaults().values(), *_default_service_files().values()]
             if isinstance(value, str) and value.startswith("/") and "{{" not in value]
    return sorted({Path(path) for path in paths})


Snapshot = Dict[str, Optional[Tuple[int, str, int]]]


def snapshot(since: Optional[Snapshot] = None) -> Snapshot:
    """machine_paths() as they are: a file's mode, its bytes' digest and their number, a directory's mode (its
    content may be another suite's: the state directory's locks), None for what is absent.

    Taken to compare with an earlier one (*since*) that found the default service's pid file, the agent's
    log at its default path is read only as far as it went then: the machine's own agent (installed at the
    defaults, as ``scripts/demo.sh`` leaves it) runs and appends to it meanwhile. Without that agent, any
    change to the log counts.
    """
    log = Path(_role_defaults()["basalt_agent_log_file"])
    own_agent = since is not None and since.get(_default_service_files()["basalt_agent_pid_file"]) is not None
    logged = since.get(str(log)) if since is not None and own_agent else None  # the log as it was then
    taken: Snapshot = {}
    for path in machine_paths():
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            taken[str(path)] = None
            continue
        data = path.read_bytes() if stat.S_ISREG(mode) else b""
        if path == log and logged is not None:
            data = data[:logged[2]]
        taken[str(path)] = (mode, hashlib.sha256(data).hexdigest() if stat.S_ISREG(mode) else "", len(data))
    return taken


def remove_leftovers(service: str) -> None:
    """What of an agent's init script its uninstall could not remove (a failed run): stopped, its boot links,
    script and pid file removed."""
    script = Path(f"/etc/init.d/{service}")
    if script.exists():
        subprocess.run([str(script), "stop"], capture_output=True, timeout=120, check=False)
        subprocess.run(["update-rc.d", "-f", service, "remove"], capture_output=True, check=False)
        script.unlink()
    Path(f"/run/{service}.pid").unlink(missing_ok=True)


def service_files(service: str) -> list[Path]:
    """An agent's init script, pid file and boot links, those that exist."""
    found = [path for path in (Path(f"/etc/init.d/{service}"), Path(f"/run/{service}.pid")) if path.exists()]
    return found + sorted(Path("/etc").glob(f"rc?.d/[SK]??{service}"))
