#!/usr/bin/env python3
"""The Python packages the agent and pytest need inside the test VM.

The guest's Debian python3-grpcio (1.51) and python3-protobuf (3.21) are older
than the agent's pins, and the guest has no network.  So the host installs the
cp311 manylinux wheels of the pinned grpcio and protobuf, plus pytest, with
``pip install --target`` into a cache directory outside the repository
(``/var/cache/basalt-vm/python-<hash of the pins>``, or under
``$BASALT_VM_CACHE``); run_vm.py shares it read-only over 9p (mount tag
``pydeps``) and the guest puts it first on ``PYTHONPATH``.  The guest's python3
is Debian bookworm's 3.11: the same ABI as the wheels asked for here, whatever
the host's own Python version.

The pins are read from ``pyproject.toml`` (``[project].dependencies`` and the
``pytest`` entry of the ``dev`` extra).  Usage: ``python3 tests/vm/pydeps.py``
prints the directory (installing first when needed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import build_image

REPO = Path(__file__).resolve().parents[2]
GUEST_PYTHON = "3.11"  # Debian bookworm
# What pip may pick: CPython 3.11 wheels for glibc x86_64 (bookworm has glibc 2.36).
PIP_PLATFORM_ARGS = [
    "--only-binary=:all:",
    "--implementation", "cp",
    "--python-version", GUEST_PYTHON,
    "--abi", "cp311",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_28_x86_64",
]
GUEST_MOUNT = "/opt/basalt-pydeps"
MOUNT_TAG = "pydeps"
# A second, separate wheel set for the modules' VM test: ansible-core at the version the Ansible checks pin.
ANSIBLE_PREFIX = "ansible"
ANSIBLE_MOUNT_TAG = "ansible"
# A third: the wheel files themselves (not installed), for the agent role's air-gapped install
# (basalt_agent_wheel_dir): the agent's runtime pins for the guest, plus the build backend the controller
# builds the agent's own wheel with.
WHEELS_PREFIX = "wheels"


def pins(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The agent's runtime requirements plus the dev extra's pytest."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    reqs += [r for r in project.get("optional-dependencies", {}).get("dev", []) if r.startswith("pytest")]
    return reqs


# Bytecode compiled on the host, when its Python is the guest's minor version (same .pyc format): under TCG,
# compiling grpc, protobuf, pytest or ansible-core in the guest costs tens of seconds per process, and the
# read-only share keeps nothing the guest compiles.
PRECOMPILE = f"{sys.version_info[0]}.{sys.version_info[1]}" == GUEST_PYTHON


def cache_key(requirements: list[str]) -> str:
    h = hashlib.sha256(json.dumps([requirements, PIP_PLATFORM_ARGS, PRECOMPILE]).encode())
    return h.hexdigest()[:16]


def ansible_pins(script: Path = REPO / "scripts" / "ansible-checks.sh") -> list[str]:
    """ansible-core at the version scripts/ansible-checks.sh pins (its ``ANSIBLE_CORE_VERSION=``)."""
    found = re.search(r"^ANSIBLE_CORE_VERSION=(\S+)$", script.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"{script} pins no ANSIBLE_CORE_VERSION")
    return [f"ansible-core=={found.group(1)}"]


def build_requires(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The agent's build backend requirements (``[build-system].requires``)."""
    return list(tomllib.loads(pyproject.read_text())["build-system"]["requires"])


def ensure_wheels() -> Path:
    """A directory of wheel files: the agent's runtime pins for the guest (cp311 manylinux) and its build
    backend (pure Python), downloaded once (``pip download``; only the current set is kept)."""
    runtime = list(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    requirements = runtime + build_requires()

    def download(tmp: Path) -> dict[str, object]:
        base = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(tmp)]
        for cmd in ([*base, *PIP_PLATFORM_ARGS, *runtime], [*base, "--only-binary=:all:", *build_requires()]):
            print("pydeps: $ " + " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
        return {"pins": requirements, "files": sorted(p.name for p in tmp.glob("*.whl"))}

    return _cached(deps_dir(requirements, WHEELS_PREFIX), WHEELS_PREFIX, download)


def _cached(final: Path, prefix: str, fill: Callable[[Path], dict[str, object]]) -> Path:
    """`final`, filled by `fill` in a temporary sibling when it is not complete yet (under the cache's
    lock; `fill` returns what ``.complete`` records), then the only directory of its `prefix` kept."""
    build_image.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (build_image.CACHE_DIR / ".pydeps.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").is_file():
            return final
        tmp = final.with_name(final.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        record = fill(tmp)
        (tmp / ".complete").write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for other in build_image.CACHE_DIR.glob(f"{prefix}-*"):  # keep only the current pins
            if other != final:
                shutil.rmtree(other, ignore_errors=True)
        return final


def deps_dir(requirements: list[str] | None = None, prefix: str = "python") -> Path:
    return build_image.CACHE_DIR / f"{prefix}-{cache_key(requirements or pins())}"


def ensure_ansible() -> Path:
    """The ansible-core wheel set (its own cache directory and 9p tag, next to the agent's)."""
    return ensure(ansible_pins(), prefix=ANSIBLE_PREFIX)


def ensure(requirements: list[str] | None = None, prefix: str = "python") -> Path:
    """The wheel directory for *requirements* (default: the agent's pins), installing it when missing.

    Only the current set of each *prefix* is kept.
    """
    requirements = requirements or pins()

    def install(tmp: Path) -> dict[str, object]:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-compile", "--target", str(tmp), *PIP_PLATFORM_ARGS, *requirements]
        print("pydeps: $ " + " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
        if PRECOMPILE:  # unchecked hashes: the directory never changes once complete
            subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", "--invalidation-mode",
                            "unchecked-hash", str(tmp)], check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL)
        installed = sorted(p.name.removesuffix(".dist-info") for p in tmp.glob("*.dist-info"))
        return {"pins": requirements, "installed": installed}

    return _cached(deps_dir(requirements, prefix), prefix, install)


if __name__ == "__main__":
    print(ensure())
