"""The zip bytecode cache of the processes the tests start (tests/zip_bytecode_site, put on PYTHONPATH by
tests/conftest.py): a Python started as the tests start one caches what it compiles from a zip in this
run's cache directory, and the interpreter's own sitecustomize, which ours hides, still runs. (The cache's
own rules are tested with the VM images' hook: test_vm_tier.py::test_the_images_cache_bytecode_of_zip_imports.)"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import private_root
import zip_bytecode_site

IMPORT_FROM_ZIP = """
import sys, zipimport
sys.path.insert(0, sys.argv[1])
import payload
print(zipimport._compile_source.__module__, payload.VALUE)
"""


def _run(archive: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", IMPORT_FROM_ZIP, str(archive)], env=env, capture_output=True,
                          text=True, timeout=60, check=True)


def _archive(tmp_path: Path) -> Path:
    archive = tmp_path / "payload.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("payload/__init__.py", f"VALUE = 7  # {tmp_path}: a source no other test compiles\n")
    return archive


def test_a_process_the_tests_start_caches_its_zip_imports_in_the_runs_directory(tmp_path: Path) -> None:
    cache = Path(os.environ[zip_bytecode_site.CACHE_VARIABLE])
    assert cache.is_dir() and cache.name.startswith("basalt-zip-bytecode-")
    assert zip_bytecode_site.SITE in os.environ["PYTHONPATH"].split(os.pathsep)
    before = set(cache.iterdir())
    ran = _run(_archive(tmp_path), dict(os.environ))
    assert ran.stdout == "basalt_zip_bytecode 7\n", ran.stderr
    assert len(set(cache.iterdir()) - before) == 1


def test_without_the_runs_directory_nothing_is_hooked(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name != zip_bytecode_site.CACHE_VARIABLE}
    assert _run(_archive(tmp_path), env).stdout == "zipimport 7\n"


def test_the_interpreters_own_sitecustomize_still_runs(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write(__name__)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([zip_bytecode_site.SITE, str(hidden)]))
    ran = _run(_archive(tmp_path), env)
    assert ran.stdout == "basalt_zip_bytecode 7\n", ran.stderr
    assert (tmp_path / "ran").read_text() == "sitecustomize"


def test_a_plays_modules_use_the_cache_and_its_agents_not_the_checkouts_code(tmp_path: Path) -> None:
    """A real ansible-playbook run in a play's environment (private_root: what the playbook tests give the
    agents they install): its modules' imports from their payloads land in the cache."""
    env = private_root.play_environment()
    assert env["PYTHONPATH"] == zip_bytecode_site.SITE
    assert env[zip_bytecode_site.CACHE_VARIABLE] == os.environ[zip_bytecode_site.CACHE_VARIABLE]
    cache = tmp_path / "cache"  # of its own: the run's may hold these sources from earlier plays
    env[zip_bytecode_site.CACHE_VARIABLE] = str(cache)
    playbook = tmp_path / "stat.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                        "    - ansible.builtin.stat:\n        path: /\n")
    subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "-e",
                    f"ansible_python_interpreter={sys.executable}", str(playbook)],
                   env=env, capture_output=True, text=True, timeout=300, check=True)
    assert len(list(cache.iterdir())) > 5  # ansible.module_utils' sources
