"""Pagination for ListVolumes and ListSnapshots.

Items are listed in a stable order (creation time, id).  A token names the
first item of the next page by that key, so deleting items between pages
neither skips nor repeats the others.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple, TypeVar

import grpc

from .errors import RpcFailure, invalid

T = TypeVar("T")


def _token(key: Tuple[float, str]) -> str:
    return f"{key[0]!r}/{key[1]}"


def _parse(token: str) -> Tuple[float, str]:
    stamp, sep, item_id = token.partition("/")
    try:
        if not sep or not item_id:
            raise ValueError(token)
        return float(stamp), item_id
    except ValueError:
        raise RpcFailure(grpc.StatusCode.ABORTED, f"starting_token {token!r} is not one this plugin issued") from None


def page(items: Sequence[T], key: Callable[[T], Tuple[float, str]], max_entries: int,
         starting_token: str) -> Tuple[List[T], str]:
    """Return one page of *items* (sorted by *key*) and the next token ('' at the end)."""
    if max_entries < 0:
        raise invalid("max_entries must not be negative")
    start = 0
    if starting_token:
        resume = _parse(starting_token)
        start = next((i for i, item in enumerate(items) if key(item) >= resume), len(items))
    end = len(items) if max_entries == 0 else min(len(items), start + max_entries)
    next_token = _token(key(items[end])) if end < len(items) else ""
    return list(items[start:end]), next_token
