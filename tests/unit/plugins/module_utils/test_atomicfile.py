"""The durable record writer: what it syncs, and in which order, is what makes a crash safe.

os.fsync, os.replace and os.unlink are wrapped (they still run) to record
each call with what the descriptor names, so a writer that skips the temp
file's fsync, syncs it before the data is in it, renames first, or forgets
the directory, fails here. (No strace: this is the order the calls are made
in, which is the order the kernel sees them.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from basalt_core import atomicfile

Event = Tuple[str, ...]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> List[Event]:
    seen: List[Event] = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd: Any) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        target = os.readlink(f"/proc/self/fd/{number}")
        # What the descriptor holds at the moment of the fsync (a directory has no bytes to read).
        content = b"" if os.path.isdir(target) else Path(target).read_bytes()
        seen.append(("fsync", target, content.decode(errors="replace")))
        real_fsync(fd)

    def replace(source: Any, destination: Any, **kwargs: Any) -> None:
        seen.append(("replace", os.fspath(source), os.fspath(destination)))
        real_replace(source, destination, **kwargs)

    def unlink(path: Any, **kwargs: Any) -> None:
        seen.append(("unlink", os.fspath(path)))
        real_unlink(path, **kwargs)

    monkeypatch.setattr(atomicfile.os, "fsync", fsync)
    monkeypatch.setattr(atomicfile.os, "replace", replace)
    monkeypatch.setattr(atomicfile.os, "unlink", unlink)
    return seen


def test_write_syncs_the_full_temp_file_then_renames_then_syncs_the_directory(tmp_path: Path,
                                                                              events: List[Event]) -> None:
    target = tmp_path / "vol-1.json"
    target.write_text("old\n")
    atomicfile.write_json(str(target), {"id": "vol-1", "state": "ready"})
    new = '{\n  "id": "vol-1",\n  "state": "ready"\n}\n'
    assert len(events) == 3, events
    (sync, temp, content), (rename, source, destination), (dir_sync, directory, _listing) = events
    assert (sync, rename, dir_sync) == ("fsync", "replace", "fsync")
    assert temp == source and os.path.basename(temp).startswith(".tmp-") and os.path.dirname(temp) == str(tmp_path)
    assert content == new, "the temp file was synced before all its data was written"
    assert destination == str(target) and directory == str(tmp_path)
    assert target.read_text() == new and oct(target.stat().st_mode & 0o777) == oct(0o600)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []


def test_a_failed_write_leaves_the_old_record_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               events: List[Event]) -> None:
    target = tmp_path / "vol-1.json"
    target.write_text("old\n")

    def crash(source: Any, destination: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomicfile.os, "replace", crash)
    with pytest.raises(OSError):
        atomicfile.write_atomic(str(target), b"new\n")
    assert target.read_text() == "old\n"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []


def test_remove_durably_syncs_the_directory_after_the_unlink(tmp_path: Path, events: List[Event]) -> None:
    target = tmp_path / "vol-1.json"
    target.write_text("{}\n")
    assert atomicfile.remove_durably(str(target)) is True
    assert events == [("unlink", str(target)), ("fsync", str(tmp_path), "")]
    assert atomicfile.remove_durably(str(target)) is False


def test_a_sweep_for_one_file_removes_only_that_files_interrupted_writes(tmp_path: Path) -> None:
    """A shared directory (tgt's conf.d): the leftovers of tgt-basalt.conf's writes go, nothing else."""
    ours = tmp_path / ".tmp-tgt-basalt.conf-k3x9"
    others = [tmp_path / ".tmp-other.conf-a1", tmp_path / "tgt-basalt.conf", tmp_path / ".tmp-tgt-basalt.confx"]
    for path in (ours, *others):
        path.write_text("x")
    assert atomicfile.sweep_temp_files(str(tmp_path), of="tgt-basalt.conf") == [str(ours)]
    assert sorted(tmp_path.iterdir()) == sorted(others)


def test_a_write_in_progress_is_named_after_the_file_it_replaces(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*_: Any) -> None:
        raise KeyboardInterrupt  # what a kill at the rename would leave, minus the clean-up
    monkeypatch.setattr(atomicfile.os, "replace", crash)
    monkeypatch.setattr(atomicfile.os, "unlink", lambda *_: None)
    with pytest.raises(KeyboardInterrupt):
        atomicfile.write_atomic(str(tmp_path / "tgt-basalt.conf"), b"secret")
    monkeypatch.undo()
    assert atomicfile.sweep_temp_files(str(tmp_path), of="tgt-basalt.conf") != []
    assert list(tmp_path.iterdir()) == []
