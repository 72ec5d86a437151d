"""Data-driven cases for the modules' unit tests: arguments, scripted core calls, expected result.

Imported by its collection name (``ansible_collections.basalt.csi.tests...``)
so that plain pytest and ``ansible-test units`` load the same module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple


class ExitJson(Exception):
    def __init__(self, result: Dict[str, Any]) -> None:
        super().__init__(result)
        self.result = result


class FailJson(ExitJson):
    pass


@dataclass
class Call:
    """One expected call of a core function the module imported, and what it gives back."""

    name: str
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    returns: Any = None
    raises: Optional[BaseException] = None


def call(name: str, *args: Any, returns: Any = None, raises: Optional[BaseException] = None,
         **kwargs: Any) -> Call:
    return Call(name, args, kwargs, returns, raises)


@dataclass
class Case:
    id: str
    args: Dict[str, Any]
    calls: List[Call]
    result: Dict[str, Any]
    check_mode: bool = False
    diff: bool = False
    failed: bool = False


class Script:
    """Stands in for every core function named in the calls, and checks the order and the arguments."""

    def __init__(self, calls: List[Call]) -> None:
        self.pending = list(calls)
        self.made: List[str] = []

    def fake(self, name: str) -> Callable[..., Any]:
        def invoked(*args: Any, **kwargs: Any) -> Any:
            assert self.pending, f"unexpected core call {name}{args} {kwargs}"
            expected = self.pending.pop(0)
            assert (name, args, kwargs) == (expected.name, expected.args, expected.kwargs), (
                f"core call {len(self.made) + 1}: got {name}{args} {kwargs}, "
                f"expected {expected.name}{expected.args} {expected.kwargs}"
            )
            self.made.append(name)
            if expected.raises is not None:
                raise expected.raises
            return expected.returns

        return invoked


def module_args(case: Case) -> Dict[str, Any]:
    args = dict(case.args)
    args["_ansible_check_mode"] = case.check_mode
    args["_ansible_diff"] = case.diff
    return args
