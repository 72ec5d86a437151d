"""Harness for the modules' data-driven unit tests, under plain pytest and ``ansible-test units``.

A case gives the module's arguments, the core calls the module must make in
order (each with the exact arguments and a canned return value or exception),
and the result the module must report. ``run_case`` replaces the core
functions the module imported with a script of those calls, runs ``main()``
and checks everything.

Under ``ansible-test units`` the collection loader makes
``ansible_collections.basalt.csi`` importable; under plain pytest from the
checkout, this file links the checkout into a temporary
``ansible_collections/basalt/csi`` tree first. Without ansible-core installed
the test modules skip themselves (scripts/ansible-checks.sh installs it).
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List

import pytest

if TYPE_CHECKING:
    from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case


def _ensure_collection_importable() -> None:
    try:
        found = importlib.util.find_spec("ansible_collections.basalt.csi.plugins.module_utils")
    except ImportError:
        found = None
    if found is not None:
        return
    root = Path(__file__).resolve().parents[4]
    shim = tempfile.mkdtemp(prefix="basalt-collection-")
    os.makedirs(os.path.join(shim, "ansible_collections", "basalt"))
    os.symlink(root, os.path.join(shim, "ansible_collections", "basalt", "csi"))
    atexit.register(shutil.rmtree, shim, True)
    sys.path.insert(0, shim)
    importlib.invalidate_caches()


if importlib.util.find_spec("ansible") is not None:  # the test modules skip themselves otherwise
    _ensure_collection_importable()


@pytest.fixture
def run_case(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Any, Case], Dict[str, Any]]]:
    """``run_case(module, case)``: run the module's main() against the scripted core; return its result."""
    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes
    from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import (
        ExitJson,
        FailJson,
        Script,
        module_args,
    )

    def exit_json(_self: Any, **result: Any) -> None:
        raise ExitJson(result)

    def fail_json(_self: Any, msg: str, **result: Any) -> None:
        raise FailJson(dict(result, msg=msg, failed=True))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    scripts: List[Script] = []

    def run(module: Any, case: Case) -> Dict[str, Any]:
        script = Script(case.calls)
        scripts.append(script)
        for name in {c.name for c in case.calls}:
            target, _dot, attribute = name.rpartition(".")
            owner = getattr(module, target) if target else module
            assert hasattr(owner, attribute), f"{module.__name__} has no {name} to stand in for"
            monkeypatch.setattr(owner, attribute, script.fake(name))
        payload = json.dumps({"ANSIBLE_MODULE_ARGS": module_args(case)})
        monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(payload))
        if hasattr(basic, "_ANSIBLE_PROFILE"):
            monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy")
        with pytest.raises(ExitJson) as outcome:
            module.main()
        result = outcome.value.result
        assert isinstance(outcome.value, FailJson) == case.failed, f"unexpected outcome: {result}"
        assert not script.pending, f"core calls expected but not made: {[c.name for c in script.pending]}"
        for key, wanted in case.result.items():
            assert key in result, f"{key!r} missing from the result {result}"
            if key == "msg" and isinstance(wanted, str):
                assert wanted in result["msg"], f"{wanted!r} not in the message {result['msg']!r}"
            else:
                assert result[key] == wanted, f"{key}: {result[key]!r} != {wanted!r}"
        return dict(result)

    yield run
