"""A bytecode cache for modules imported from zip archives (Basalt's test VM images and test runs only).

Ansible runs every task's module from a zip (its AnsiballZ payload), and a zip holds no bytecode: each
task compiles ``ansible.module_utils`` again, about half of a module run (natively 0.26 s against 0.13 s
for ``stat``), and under TCG seconds per task. This keeps each compiled source, keyed by Python's magic
number, the path inside the archive and the source's SHA-256, in a directory of the guest's own (its
root disk is a snapshot, so the cache lasts one boot). The code run is exactly what compiling the same
source gives; only the file name in tracebacks is set back to this run's archive. Loaded by
``basalt-zip-bytecode.pth`` in the system's site directory (in a test run on the host: by
tests/zip_bytecode_site, with a cache of the run's own); a cache that cannot be read or written is passed
over, as if the hook were not there.
"""

import marshal
import os
import zipimport
from types import CodeType

CACHE_DIR = "/var/cache/basalt-zip-bytecode"
# zipimport's own compile step (Python 3.8 to 3.13); where it is missing, the hook stays out of the way
_compile_source = getattr(zipimport, "_compile_source", None)


def _renamed(code: CodeType, filename: str) -> CodeType:
    consts = tuple(_renamed(c, filename) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _cached_compile(pathname: str, source: bytes) -> CodeType:
    # Imported here, not above: every Python process of the guest loads this module, and these would add
    # 10 ms to each start natively (a few hundred under TCG); only a zip import needs them.
    import hashlib
    import importlib.util

    inside = pathname.rpartition(".zip")[2]  # the temporary archive's own path changes every run
    key = hashlib.sha256(importlib.util.MAGIC_NUMBER + inside.encode() + b"\0" + source).hexdigest()
    path = os.path.join(CACHE_DIR, key)
    try:
        with open(path, "rb") as f:
            return _renamed(marshal.load(f), pathname)
    except (OSError, EOFError, ValueError, TypeError):
        pass
    assert _compile_source is not None
    code: CodeType = _compile_source(pathname, source)
    try:
        os.makedirs(CACHE_DIR, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as f:
            marshal.dump(code, f)
        os.replace(tmp, path)
    except OSError:
        pass
    return code


if _compile_source is not None:
    zipimport._compile_source = _cached_compile  # type: ignore[attr-defined]
