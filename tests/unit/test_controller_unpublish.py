"""ControllerUnpublishVolume forgets the publication record before the storage host changes anything.

A crash after the record went leaves an export that no record wants, which the reconciliation at start
removes (docs/side-effects-iscsi.md); the other way round it would restore an export the CO asked to end.
Real file-pool records in a temp directory; the publishing side is a recorder (the tgt and LIO steps
themselves: test_tgt_exports.py, test_lio.py, tests/iscsi/test_publish_crash.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest
from servicer_context import Aborted, Context

from basalt_agent.controller import ControllerService
from basalt_agent.locks import ObjectLocks
from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.publishing import LocalPublishing
from basalt_core import volumes
from basalt_core.file_pool import FilePool
from basalt_core.model import Publication

NODES = ("node-a", "node-b")


class Recording(LocalPublishing):
    """Notes, at each unpublish, which nodes the volume's record still names."""

    def __init__(self, pool: FilePool) -> None:
        super().__init__(pool, NODES[0])
        self.seen: List[Tuple[str, Tuple[str, ...]]] = []

    def unpublish(self, volume_id: str, node_id: str) -> None:
        volume = self.pool.load_volume(volume_id)
        assert volume is not None
        self.seen.append((node_id, tuple(sorted(volume.publications))))


def _published(tmp_path: Path) -> Tuple[FilePool, Recording, ControllerService, str]:
    pool = FilePool(str(tmp_path / "pool"))
    pool.ensure_layout()
    volume, _ = volumes.ensure_volume(pool, "pvc-unpublish", 1 << 20)
    shared = Publication(readonly=False, access_mode="MULTI_NODE_MULTI_WRITER")
    for node in NODES:
        volumes.set_publication(pool, volume.id, node, shared)
    publishing = Recording(pool)
    return pool, publishing, ControllerService(pool, publishing, ObjectLocks(), 1 << 20), volume.id


def test_each_node_leaves_the_record_before_its_access_is_withdrawn(tmp_path: Path) -> None:
    pool, publishing, controller, volume_id = _published(tmp_path)
    controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id="node-b"),
                                         Context())
    assert publishing.seen == [("node-b", ("node-a",))]
    # no node_id: every node, each one's record entry first
    controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=volume_id), Context())
    assert publishing.seen[1:] == [("node-a", ())]
    volume = pool.load_volume(volume_id)
    assert volume is not None and not volume.publications


def test_a_record_that_cannot_be_written_withdraws_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool, publishing, controller, volume_id = _published(tmp_path)

    def full(*_args: object) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pool, "save_volume", full)
    with pytest.raises(Aborted):
        controller.ControllerUnpublishVolume(
            csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id="node-b"), Context())
    assert publishing.seen == []
    volume = pool.load_volume(volume_id)
    assert volume is not None and sorted(volume.publications) == list(NODES)
