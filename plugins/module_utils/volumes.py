"""Pool-independent volume and snapshot operations, idempotent and crash-safe.

Every change is written as a record in state ``creating``/``deleting`` before
the data is touched, and marked ``ready`` (or forgotten) after, so a crash at
any point leaves a record that a retry or ``clean_up`` finishes.
Callers serialise operations per name and per id (the agent's locks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Tuple, TypeVar, Union, cast

from .errors import AlreadyExists, Conflict, InUse, NoSpace, NotFound, OutOfRange
from .model import (
    CREATING,
    DELETING,
    READY,
    SOURCE_SNAPSHOT,
    ContentSource,
    Publication,
    Snapshot,
    Volume,
    is_snapshot_id,
    is_volume_id,
    snapshot_id_for,
    volume_id_for,
)
from .pool import Pool

log = logging.getLogger(__name__)

_Operation = TypeVar("_Operation", bound=Callable[..., Any])


def _one_operation(func: _Operation) -> _Operation:
    """Run *func* (pool first) in one ``pool.operation()``: the pool may reuse its reads within it."""
    @functools.wraps(func)
    def wrapper(pool: Pool, *args: Any, **kwargs: Any) -> Any:
        with pool.operation():
            return func(pool, *args, **kwargs)
    return cast(_Operation, wrapper)


# -- lookups -------------------------------------------------------------------

def get_volume(pool: Pool, volume_id: str) -> Volume:
    volume = pool.load_volume(volume_id) if is_volume_id(volume_id) else None
    if volume is None or volume.state != READY:
        raise NotFound(f"volume {volume_id!r} does not exist in the {pool.kind} pool at {pool.location}")
    return volume


def find_volume_by_name(pool: Pool, name: str) -> Optional[Volume]:
    volume = pool.load_volume(volume_id_for(name))
    if volume is None or volume.state != READY or volume.name != name:
        return None
    return volume


def get_snapshot(pool: Pool, snapshot_id: str) -> Snapshot:
    snapshot = pool.load_snapshot(snapshot_id) if is_snapshot_id(snapshot_id) else None
    if snapshot is None or snapshot.state != READY:
        raise NotFound(f"snapshot {snapshot_id!r} does not exist in the {pool.kind} pool at {pool.location}")
    return snapshot


def list_volumes(pool: Pool) -> List[Volume]:
    """Ready volumes in a stable order (creation time, then id) for pagination."""
    return sorted((v for v in pool.all_volumes() if v.state == READY), key=lambda v: (v.created_at, v.id))


def list_snapshots(pool: Pool) -> List[Snapshot]:
    return sorted((s for s in pool.all_snapshots() if s.state == READY), key=lambda s: (s.created_at, s.id))


# -- volumes -------------------------------------------------------------------

def _resolve_source(pool: Pool, source: Optional[ContentSource]) -> Optional[Union[Volume, Snapshot]]:
    if source is None:
        return None
    if source.kind == SOURCE_SNAPSHOT:
        return get_snapshot(pool, source.id)
    return get_volume(pool, source.id)


@_one_operation
def ensure_volume(
    pool: Pool,
    name: str,
    size: int,
    *,
    min_size: int = 0,
    max_size: int = 0,
    parameters: Optional[Dict[str, str]] = None,
    source: Optional[ContentSource] = None,
    ephemeral: bool = False,
    check_mode: bool = False,
) -> Tuple[Volume, bool]:
    """Return the volume called *name*, creating it with *size* bytes if needed.

    An existing volume is accepted when its size lies in [min_size, max_size]
    (0 = unbounded) and its parameters and source match; otherwise Conflict.
    """
    params = dict(parameters or {})
    volume_id = volume_id_for(name)
    if source is None and pool.creates_exclusively and not _checks_space(pool, check_mode):
        # The usual case, a new name: create first; an earlier attempt (or a taken name) makes it refuse,
        # and only then is the name looked up. The same records in the same order as below.
        volume = Volume(id=volume_id, name=name, size=size, pool=pool.kind, parameters=params, ephemeral=ephemeral)
        try:
            pool.create_volume(volume)
        except AlreadyExists:
            pass
        else:
            return _provisioned(pool, volume, None), True
    existing = pool.load_volume(volume_id)
    if existing is not None and existing.state == READY:
        _check_compatible(existing, min_size or size, max_size, params, source)
        return existing, False
    origin = _resolve_source(pool, source)
    if origin is not None and size < origin.size:
        raise OutOfRange(
            f"volume {name!r} would be {size} bytes, smaller than its source {origin.id} ({origin.size} bytes)"
        )
    if existing is not None and existing.state == DELETING:
        _finish_delete(pool, existing, check_mode)
    reuse = existing is not None and existing.state == CREATING
    volume = Volume(id=volume_id, name=name, size=size, pool=pool.kind, parameters=params,
                    source=source, ephemeral=ephemeral)
    # Only a space check needs the pool-wide lock (until the record claims the space); where the
    # allocation itself refuses (lvcreate), creates of different volumes run at once.
    checking = not reuse and _checks_space(pool, check_mode)
    with pool.allocation if checking else contextlib.nullcontext():
        if checking:
            _check_space(pool, size, f"volume {name!r}", check_mode)
        if check_mode:
            volume.state = READY
            return volume, True
        if reuse:
            log.info("completing the unfinished creation of volume %s (%r)", volume_id, name)
            pool.save_volume(volume)
        elif pool.ready_when_allocated(volume, origin):
            volume.state = READY  # nothing to provision: the one record is final (a thin LV reads zeroes)
            pool.create_volume(volume)
        else:
            pool.create_volume(volume)  # the creating record claims the space
    return _provisioned(pool, volume, origin), True


def _provisioned(pool: Pool, volume: Volume, origin: Optional[Union[Volume, Snapshot]]) -> Volume:
    """Fill a volume whose first record is written, then record it ready (the last commit of a create)."""
    if volume.state != READY:
        volume.copy_method = pool.provision_volume(volume, origin)
        volume.state = READY
        pool.save_volume(volume)
    log.info("created volume %s (%r, %d bytes)", volume.id, volume.name, volume.size)
    return volume


def _checks_space(pool: Pool, check_mode: bool) -> bool:
    """False when the allocation itself answers NoSpace (check mode allocates nothing: it must look)."""
    return not pool.allocation_checks_space or bool(pool.capacity_limit) or check_mode


def _check_space(pool: Pool, needed: int, what: str, check_mode: bool) -> None:
    if not _checks_space(pool, check_mode):
        return
    available = pool.available_bytes()
    if needed > available:
        raise NoSpace(f"the {pool.kind} pool at {pool.location} has {available} bytes available, {what} needs {needed}")


def _check_compatible(volume: Volume, min_size: int, max_size: int,
                      parameters: Dict[str, str], source: Optional[ContentSource]) -> None:
    problems = []
    if volume.size < min_size or (max_size and volume.size > max_size):
        problems.append(f"its size is {volume.size} bytes, outside the requested [{min_size}, {max_size or 'any'}]")
    if volume.parameters != parameters:
        problems.append("its parameters differ")
    if volume.source != source:
        problems.append("its content source differs")
    if problems:
        raise Conflict(f"volume {volume.name!r} ({volume.id}) already exists and " + "; ".join(problems))


@_one_operation
def delete_volume(pool: Pool, volume_id: str, *, check_mode: bool = False) -> bool:
    """Delete a volume; False when there is none. Refuses while it is published or attached."""
    volume = pool.load_volume(volume_id) if is_volume_id(volume_id) else None
    if volume is None:
        return False
    if volume.state == READY:
        if volume.publications:
            nodes = ", ".join(sorted(volume.publications))
            raise InUse(f"volume {volume_id} is still published to node(s) {nodes}")
        busy = pool.busy_reason(volume)
        if busy:
            raise InUse(f"volume {volume_id} is in use: {busy}")
    if check_mode:
        return True
    _finish_delete(pool, volume, check_mode)
    return True


def _finish_delete(pool: Pool, volume: Volume, check_mode: bool) -> None:
    if check_mode:
        return
    if not pool.releases_record_with_data:
        volume.state = DELETING
        pool.save_volume(volume)
    pool.release_volume(volume)
    pool.forget_volume(volume.id)
    log.info("deleted volume %s (%r)", volume.id, volume.name)


@_one_operation
def expand_volume(pool: Pool, volume_id: str, size: int, *, check_mode: bool = False) -> Tuple[Volume, bool]:
    """Grow a volume to at least *size* bytes; never shrinks. Returns (volume, changed)."""
    volume = get_volume(pool, volume_id)
    if size <= volume.size:
        return volume, False
    with pool.allocation:
        _check_space(pool, size - volume.size, f"growing volume {volume_id}", check_mode)
        if check_mode:
            return dataclasses.replace(volume, size=size), True
        pool.resize_volume(volume, size)
        volume.size = size
        pool.save_volume(volume)
    log.info("expanded volume %s to %d bytes", volume_id, size)
    return volume, True


@_one_operation
def set_publication(pool: Pool, volume_id: str, node_id: str, publication: Publication) -> Tuple[Volume, bool]:
    volume = get_volume(pool, volume_id)
    if volume.publications.get(node_id) == publication:
        return volume, False
    volume.publications[node_id] = publication
    pool.save_volume(volume)
    return volume, True


@_one_operation
def clear_publication(pool: Pool, volume_id: str, node_id: str) -> bool:
    volume = pool.load_volume(volume_id) if is_volume_id(volume_id) else None
    if volume is None or node_id not in volume.publications:
        return False
    del volume.publications[node_id]
    pool.save_volume(volume)
    return True


# -- snapshots -----------------------------------------------------------------

@_one_operation
def ensure_snapshot(
    pool: Pool,
    name: str,
    volume_id: str,
    *,
    parameters: Optional[Dict[str, str]] = None,
    check_mode: bool = False,
) -> Tuple[Snapshot, bool]:
    """Return the snapshot called *name* of *volume_id*, taking it if needed."""
    params = dict(parameters or {})
    snapshot_id = snapshot_id_for(name)
    existing = pool.load_snapshot(snapshot_id)
    if existing is not None and existing.state == READY:
        if existing.source_volume_id != volume_id:
            raise Conflict(
                f"snapshot {name!r} ({snapshot_id}) already exists of volume {existing.source_volume_id}, "
                f"not of {volume_id}"
            )
        if existing.parameters != params:
            raise Conflict(f"snapshot {name!r} ({snapshot_id}) already exists with other parameters")
        return existing, False
    volume = get_volume(pool, volume_id)
    if existing is not None and existing.state == DELETING:
        _finish_snapshot_delete(pool, existing)
    snapshot = Snapshot(id=snapshot_id, name=name, source_volume_id=volume_id, size=volume.size,
                        pool=pool.kind, parameters=params)
    with pool.allocation:
        if existing is None:
            _check_space(pool, volume.size, f"snapshot {name!r}", check_mode)
        if check_mode:
            snapshot.state = READY
            return snapshot, True
        pool.save_snapshot(snapshot)
    snapshot.copy_method = pool.take_snapshot(snapshot, volume)
    snapshot.state = READY
    pool.save_snapshot(snapshot)
    log.info("took snapshot %s (%r) of volume %s", snapshot_id, name, volume_id)
    return snapshot, True


@_one_operation
def delete_snapshot(pool: Pool, snapshot_id: str, *, check_mode: bool = False) -> bool:
    snapshot = pool.load_snapshot(snapshot_id) if is_snapshot_id(snapshot_id) else None
    if snapshot is None:
        return False
    if not check_mode:
        _finish_snapshot_delete(pool, snapshot)
    return True


def _finish_snapshot_delete(pool: Pool, snapshot: Snapshot) -> None:
    if not pool.releases_record_with_data:
        snapshot.state = DELETING
        pool.save_snapshot(snapshot)
    pool.release_snapshot(snapshot)
    pool.forget_snapshot(snapshot.id)
    log.info("deleted snapshot %s (%r)", snapshot.id, snapshot.name)


# -- recovery ------------------------------------------------------------------

@contextlib.contextmanager
def _always(_object_id: str) -> Iterator[bool]:
    yield True


def clean_up(
    pool: Pool,
    grace_seconds: float,
    *,
    claim: Callable[[str], ContextManager[bool]] = _always,
    now: Optional[float] = None,
) -> List[str]:
    """Finish interrupted deletes and remove creations abandoned for *grace_seconds*.

    A create that is never retried leaves a ``creating`` record; once it is
    older than the grace period nobody will complete it, so its data goes.
    *claim(id)* guards each object against concurrent requests: an object
    it does not grant (yields False) is left for the next round.
    """
    now = time.time() if now is None else now
    done: List[str] = []
    for candidate in pool.all_volumes():
        if not _abandoned(candidate.state, candidate.created_at, now, grace_seconds):
            continue
        with claim(candidate.id) as granted, pool.operation():
            volume = pool.load_volume(candidate.id) if granted else None  # re-read under the claim
            if volume is not None and _abandoned(volume.state, volume.created_at, now, grace_seconds):
                log.warning("removing %s volume %s (%r) left by an interrupted operation",
                            volume.state, volume.id, volume.name)
                _finish_delete(pool, volume, False)
                done.append(volume.id)
    for found in pool.all_snapshots():
        if not _abandoned(found.state, found.created_at, now, grace_seconds):
            continue
        with claim(found.id) as granted, pool.operation():
            snapshot = pool.load_snapshot(found.id) if granted else None
            if snapshot is not None and _abandoned(snapshot.state, snapshot.created_at, now, grace_seconds):
                log.warning("removing %s snapshot %s (%r) left by an interrupted operation",
                            snapshot.state, snapshot.id, snapshot.name)
                _finish_snapshot_delete(pool, snapshot)
                done.append(snapshot.id)
    return done


def abandoned(pool: Pool, grace_seconds: float, now: Optional[float] = None) -> List[Union[Volume, Snapshot]]:
    """What :func:`clean_up` would remove now (for reports: it re-reads under its claims itself)."""
    now = time.time() if now is None else now
    found: List[Union[Volume, Snapshot]] = [*pool.all_volumes(), *pool.all_snapshots()]
    return [record for record in found if _abandoned(record.state, record.created_at, now, grace_seconds)]


def _abandoned(state: str, created_at: float, now: float, grace_seconds: float) -> bool:
    return state == DELETING or (state == CREATING and now - created_at > grace_seconds)
