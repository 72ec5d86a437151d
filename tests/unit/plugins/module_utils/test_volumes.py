"""Pool-independent volume rules, exercised on a real file pool in a temp dir."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from basalt_core import volumes
from basalt_core.errors import Conflict, InUse, NoSpace, NotFound, OutOfRange
from basalt_core.file_pool import FilePool
from basalt_core.model import CREATING, DELETING, READY, SOURCE_SNAPSHOT, SOURCE_VOLUME, ContentSource, Publication
from basalt_core.sizes import MiB


@pytest.fixture
def pool(tmp_path: Path) -> FilePool:
    made = FilePool(str(tmp_path / "pool"))
    made.ensure_layout()
    return made


def record(pool: FilePool, volume_id: str) -> Any:
    with open(os.path.join(pool.directory, "volumes", volume_id + ".json")) as handle:
        return json.load(handle)


def test_create_is_idempotent_by_name(pool: FilePool) -> None:
    first, changed = volumes.ensure_volume(pool, "pvc-ünï✓", 4 * MiB)
    again, changed_again = volumes.ensure_volume(pool, "pvc-ünï✓", 4 * MiB)
    assert changed and not changed_again and first.id == again.id
    assert os.path.getsize(pool.image_path(first.id)) == 4 * MiB
    assert os.stat(pool.image_path(first.id)).st_blocks == 0  # sparse
    assert record(pool, first.id)["name"] == "pvc-ünï✓" and record(pool, first.id)["state"] == READY


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"min_size": 8 * MiB}, "size"),
        ({"parameters": {"other": "x"}}, "parameters"),
        ({"source": ContentSource(SOURCE_VOLUME, "vol-" + "0" * 32)}, "source"),
    ],
)
def test_same_name_incompatible_is_a_conflict(pool: FilePool, kwargs: Any, problem: str) -> None:
    volumes.ensure_volume(pool, "db", 4 * MiB)
    with pytest.raises(Conflict, match=problem):
        volumes.ensure_volume(pool, "db", 8 * MiB, **kwargs)


def test_missing_source_is_not_found(pool: FilePool) -> None:
    with pytest.raises(NotFound):
        volumes.ensure_volume(pool, "x", MiB, source=ContentSource(SOURCE_SNAPSHOT, "snap-" + "1" * 32))


def test_restore_smaller_than_source_is_out_of_range(pool: FilePool) -> None:
    origin = volumes.ensure_volume(pool, "origin", 8 * MiB)[0]
    snap = volumes.ensure_snapshot(pool, "s", origin.id)[0]
    with pytest.raises(OutOfRange):
        volumes.ensure_volume(pool, "small", 4 * MiB, source=ContentSource(SOURCE_SNAPSHOT, snap.id))


def test_snapshot_and_clone_copy_the_data(pool: FilePool) -> None:
    origin = volumes.ensure_volume(pool, "origin", 8 * MiB)[0]
    with open(pool.image_path(origin.id), "r+b") as image:
        image.seek(3 * MiB)
        image.write(b"basalt")
    snap = volumes.ensure_snapshot(pool, "s1", origin.id)[0]
    with open(pool.image_path(origin.id), "r+b") as image:
        image.seek(3 * MiB)
        image.write(b"CHANGED")
    restored = volumes.ensure_volume(pool, "r", 16 * MiB, source=ContentSource(SOURCE_SNAPSHOT, snap.id))[0]
    clone = volumes.ensure_volume(pool, "c", 8 * MiB, source=ContentSource(SOURCE_VOLUME, origin.id))[0]
    with open(pool.image_path(restored.id), "rb") as image:
        image.seek(3 * MiB)
        assert image.read(6) == b"basalt"
    assert os.path.getsize(pool.image_path(restored.id)) == 16 * MiB
    with open(pool.image_path(clone.id), "rb") as image:
        image.seek(3 * MiB)
        assert image.read(7) == b"CHANGED"
    assert restored.copy_method in ("reflink", "copy")


def test_snapshot_same_name_other_volume_conflicts(pool: FilePool) -> None:
    a = volumes.ensure_volume(pool, "a", MiB)[0]
    b = volumes.ensure_volume(pool, "b", MiB)[0]
    volumes.ensure_snapshot(pool, "s", a.id)
    assert volumes.ensure_snapshot(pool, "s", a.id)[1] is False
    with pytest.raises(Conflict):
        volumes.ensure_snapshot(pool, "s", b.id)


def test_delete_is_idempotent_and_refuses_published(pool: FilePool) -> None:
    volume = volumes.ensure_volume(pool, "a", MiB)[0]
    volumes.set_publication(pool, volume.id, "node-1", Publication(readonly=False, access_mode="SINGLE_NODE_WRITER"))
    with pytest.raises(InUse, match="node-1"):
        volumes.delete_volume(pool, volume.id)
    assert volumes.clear_publication(pool, volume.id, "node-1") is True
    assert volumes.delete_volume(pool, volume.id) is True
    assert volumes.delete_volume(pool, volume.id) is False
    assert not os.path.exists(pool.image_path(volume.id))
    assert volumes.delete_volume(pool, "--not-an-id") is False


def test_check_mode_changes_nothing(pool: FilePool) -> None:
    planned, changed = volumes.ensure_volume(pool, "a", MiB, check_mode=True)
    assert changed and planned.state == READY
    assert pool.volume_ids() == [] and os.listdir(os.path.join(pool.directory, "volumes")) == []
    real = volumes.ensure_volume(pool, "a", MiB)[0]
    assert volumes.expand_volume(pool, real.id, 2 * MiB, check_mode=True)[1] is True
    assert os.path.getsize(pool.image_path(real.id)) == MiB
    assert volumes.delete_volume(pool, real.id, check_mode=True) is True
    assert os.path.exists(pool.image_path(real.id))


def test_expand_grows_and_never_shrinks(pool: FilePool) -> None:
    volume = volumes.ensure_volume(pool, "a", 2 * MiB)[0]
    assert volumes.expand_volume(pool, volume.id, MiB) == (volume, False)
    grown, changed = volumes.expand_volume(pool, volume.id, 3 * MiB)
    assert changed and grown.size == 3 * MiB == os.path.getsize(pool.image_path(volume.id))


def test_capacity_limit(tmp_path: Path) -> None:
    pool = FilePool(str(tmp_path / "p"), capacity_limit=10 * MiB)
    pool.ensure_layout()
    volumes.ensure_volume(pool, "a", 6 * MiB)
    assert pool.available_bytes() == 4 * MiB
    with pytest.raises(NoSpace):
        volumes.ensure_volume(pool, "b", 6 * MiB)


class Crash(Exception):
    pass


def test_crash_during_create_is_completed_by_a_retry(pool: FilePool, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*_: Any) -> None:
        raise Crash()

    with monkeypatch.context() as patch:
        patch.setattr(pool, "provision_volume", crash)
        with pytest.raises(Crash):
            volumes.ensure_volume(pool, "a", MiB)
    volume_id = volumes.volume_id_for("a")
    assert record(pool, volume_id)["state"] == CREATING
    assert volumes.find_volume_by_name(pool, "a") is None  # unfinished volumes are invisible
    volume, changed = volumes.ensure_volume(pool, "a", MiB)
    assert changed and volume.id == volume_id and record(pool, volume_id)["state"] == READY


def test_abandoned_create_is_cleaned_after_grace(pool: FilePool, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(volume: Any, source: Any) -> None:
        open(pool.image_path(volume.id), "wb").close()  # partial data
        raise Crash()

    monkeypatch.setattr(pool, "provision_volume", crash)
    with pytest.raises(Crash):
        volumes.ensure_volume(pool, "a", MiB)
    volume_id = volumes.volume_id_for("a")
    created = record(pool, volume_id)["created_at"]
    assert volumes.clean_up(pool, 600, now=created + 10) == []  # still within grace: a retry may come
    assert volumes.clean_up(pool, 600, now=created + 601) == [volume_id]
    assert pool.volume_ids() == [] and not os.path.exists(pool.image_path(volume_id))


def crash(*_args: Any) -> None:
    raise Crash()


def test_crash_during_delete_is_finished(pool: FilePool, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = volumes.ensure_volume(pool, "a", MiB)[0]
    with monkeypatch.context() as patch:
        patch.setattr(pool, "release_volume", crash)
        with pytest.raises(Crash):
            volumes.delete_volume(pool, volume.id)
    assert record(pool, volume.id)["state"] == DELETING
    with pytest.raises(NotFound):
        volumes.get_volume(pool, volume.id)
    assert volumes.clean_up(pool, 600) == [volume.id]
    assert not os.path.exists(pool.image_path(volume.id))


def test_claimed_objects_are_left_alone(pool: FilePool, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    volume = volumes.ensure_volume(pool, "a", MiB)[0]
    with monkeypatch.context() as patch:
        patch.setattr(pool, "release_volume", crash)
        with pytest.raises(Crash):
            volumes.delete_volume(pool, volume.id)

    @contextlib.contextmanager
    def busy(_object_id: str) -> Any:
        yield False

    assert volumes.clean_up(pool, 0, claim=busy) == []
    assert record(pool, volume.id)["state"] == DELETING


def test_leftover_temp_files_are_removed(pool: FilePool) -> None:
    stray = os.path.join(pool.directory, "volumes", ".tmp-abc")
    open(stray, "w").close()
    assert pool.clean_leftovers() == [stray]


def test_listing_is_stable_and_skips_unfinished(pool: FilePool) -> None:
    made = [volumes.ensure_volume(pool, f"v{i}", MiB)[0].id for i in range(3)]
    assert [v.id for v in volumes.list_volumes(pool)] == made


def test_a_create_takes_the_pool_wide_lock_only_to_check_space(pool: FilePool) -> None:
    """Where the allocation itself refuses what does not fit (lvcreate), creates of different volumes do not
    wait for each other; a space check (here: a capacity limit to count against) holds the lock until the
    record claims the space."""
    pool.allocation_checks_space = True  # as the lvm pool

    def create(name: str, done: threading.Event) -> threading.Thread:
        def run() -> None:
            volumes.ensure_volume(pool, name, MiB)
            done.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    free, checked = threading.Event(), threading.Event()
    with pool.allocation:  # another create checking space meanwhile
        create("needs-no-check", free)
        assert free.wait(30), "a create that checks no space waited for the pool-wide lock"
        pool.capacity_limit = 64 * MiB
        checking = create("checks", checked)
        assert not checked.wait(0.3), "a create that checks space went past the pool-wide lock"
    checking.join(30)
    assert checked.is_set()
    assert {v.name: v.state for v in pool.all_volumes()} == {"needs-no-check": READY, "checks": READY}
