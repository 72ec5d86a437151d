"""Loaded at start by every Python process the tests start (this directory is on their PYTHONPATH): the
zip bytecode hook of the VM images (tests/vm/image/basalt_zip_bytecode.py) with the test run's own cache
directory, then the interpreter's own sitecustomize, which this file hides (Debian's python3 has one)."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _hook(cache: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "vm", "image"))
    try:
        import basalt_zip_bytecode
    finally:
        del sys.path[0]
    basalt_zip_bytecode.CACHE_DIR = cache


def _the_hidden_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


if os.environ.get("BASALT_ZIP_BYTECODE_CACHE"):  # __init__.CACHE_VARIABLE
    _hook(os.environ["BASALT_ZIP_BYTECODE_CACHE"])
_the_hidden_sitecustomize()
