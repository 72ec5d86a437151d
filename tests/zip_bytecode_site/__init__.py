"""A bytecode cache for what the processes the tests start import from zip archives (this checkout's suites
only: the built collection leaves this directory out). Ansible runs each task's module from a zip, which
holds no bytecode, so every task compiled ``ansible.module_utils`` again: a fifth of a playbook test's time
(tests/vm/image/basalt_zip_bytecode.py is the hook, which the VM images load too).

tests/conftest.py calls enable(): this directory goes on PYTHONPATH, so every Python process started from
the tests loads its sitecustomize.py, which installs the hook with this run's cache directory."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

SITE = str(Path(__file__).resolve().parent)
# Where the processes the tests start keep the run's bytecode (sitecustomize.py reads it).
CACHE_VARIABLE = "BASALT_ZIP_BYTECODE_CACHE"


def enable() -> None:
    """SITE on PYTHONPATH, and a cache directory for this run (removed at its exit) unless a parent run,
    whose tests started this one, gave its own."""
    inherited = [part for part in os.environ.get("PYTHONPATH", "").split(os.pathsep) if part and part != SITE]
    os.environ["PYTHONPATH"] = os.pathsep.join([*inherited, SITE])
    if not os.environ.get(CACHE_VARIABLE):
        cache = tempfile.mkdtemp(prefix="basalt-zip-bytecode-")
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        os.environ[CACHE_VARIABLE] = cache
