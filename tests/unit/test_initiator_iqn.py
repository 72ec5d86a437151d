"""Node initiator IQNs without manual steps: derived from node ids, checked or written in the node's own file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, List, cast

import pytest

from basalt_agent import config, initiator
from basalt_agent.initiator import InitiatorName
from basalt_agent.publishing import IscsiPublishing
from basalt_core.errors import InvalidRequest, Precondition
from basalt_core.exports import ExportSettings
from basalt_core.iscsi_target import check_iqn, initiator_iqn_for

NODE_BASE = "iqn.2026-11.dev.basalt.node"


@pytest.mark.parametrize(("node_id", "expected"), [
    ("node-a", f"{NODE_BASE}:node-a"),
    ("worker-3.rack1.example.com", f"{NODE_BASE}:worker-3.rack1.example.com"),
    # Not representable as is: sanitised, with a hash of the exact id so Node_1 and node-1 differ.
    ("Node_1", f"{NODE_BASE}:node-1-" + "__HASH__"),
])
def test_derived_names(node_id: str, expected: str) -> None:
    derived = initiator_iqn_for(NODE_BASE, node_id)
    assert check_iqn(derived) == derived
    if expected.endswith("__HASH__"):
        prefix = expected[: -len("__HASH__")]
        assert derived.startswith(prefix) and len(derived) == len(prefix) + 12
        assert derived != initiator_iqn_for(NODE_BASE, "node-1")
    else:
        assert derived == expected


def test_a_long_node_id_still_fits() -> None:
    derived = initiator_iqn_for(NODE_BASE, "n" * 256)
    assert len(derived.encode()) <= 223 and derived != initiator_iqn_for(NODE_BASE, "n" * 255)


@pytest.mark.parametrize("base", ["iqn.2026-11.dev.basalt:nodes", "IQN.2026-11.dev.basalt", "-iqn.2026-11.x",
                                  "eui.0123456789ABCDEF", "iqn.2026-13.dev.basalt", ""])
def test_bad_bases_are_refused(base: str) -> None:
    with pytest.raises(InvalidRequest):
        initiator_iqn_for(base, "node-a")


@pytest.mark.parametrize("argv", [
    ["--iscsi-initiator-base", "iqn.2026-11.dev.basalt:x"],
    ["--iscsi-initiator", "node-a=iqn.2026-11.Dev.basalt:a"],
    ["--iscsi-initiator=-node=iqn.2026-11.dev.basalt:a"],
    ["--iscsi-initiator", "node-a=-iqn.2026-11.dev.basalt:a"],
    ["--iscsi-manage-initiatorname"],
    ["--iscsi-initiatorname-file", "relative/initiatorname.iscsi"],
])
def test_bad_settings_fail_at_start(argv: List[str]) -> None:
    with pytest.raises(InvalidRequest):
        config.load(["--node-id", "node-a", *argv], environ={})


def test_toml_map_is_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[iscsi_initiators]\nnode-a = "not-an-iqn"\n')
    with pytest.raises(InvalidRequest):
        config.load(["--config", str(path)], environ={})


def test_map_overrides_the_derived_name(tmp_path: Path) -> None:
    settings = config.load(["--node-id", "node-a", "--iscsi-initiator-base", NODE_BASE,
                            "--iscsi-initiator", "node-a=iqn.1993-08.org.debian:01:abc",
                            "--iscsi-initiatorname-file", str(tmp_path / "initiatorname.iscsi")], environ={})
    own = initiator.for_node(settings)
    assert own is not None and own.wanted == "iqn.1993-08.org.debian:01:abc"
    publishing = IscsiPublishing(cast(Any, None), "storage-1", cast(Any, None),
                                 ExportSettings("iqn.2026-11.dev.basalt", ("127.0.0.1:3260",)),
                                 settings.iscsi_initiators, initiator_base=NODE_BASE)
    assert publishing.initiator_for("node-a") == "iqn.1993-08.org.debian:01:abc"
    assert publishing.initiator_for("node-b") == f"{NODE_BASE}:node-b"
    assert publishing.reaches("node-b") and publishing.topologies() == []


def test_without_a_base_only_mapped_nodes_are_known() -> None:
    publishing = IscsiPublishing(cast(Any, None), "storage-1", cast(Any, None),
                                 ExportSettings("iqn.2026-11.dev.basalt", ("127.0.0.1:3260",)),
                                 {"node-a": f"{NODE_BASE}:node-a"})
    assert publishing.reaches("node-a") and publishing.reaches("storage-1")
    assert not publishing.reaches("node-z") and publishing.initiator_for("node-z") is None
    assert sorted(t.segments["topology.basalt.dev/node"] for t in publishing.topologies()) == ["node-a", "storage-1"]


def test_no_settings_no_check(tmp_path: Path) -> None:
    settings = config.load(["--node-id", "node-a"], environ={})
    assert initiator.for_node(settings) is None


DEBIAN_FILE = "## DO NOT EDIT OR REMOVE THIS FILE!\n## If you remove this file, the iSCSI daemon will not start.\n" \
              "InitiatorName=iqn.1993-08.org.debian:01:67b774ffb758\n"


def test_check_names_the_file_and_both_iqns(tmp_path: Path) -> None:
    path = tmp_path / "initiatorname.iscsi"
    path.write_text(DEBIAN_FILE)
    name = InitiatorName(str(path), f"{NODE_BASE}:node-a", manage=False)
    assert not name.ensure()  # not managed: never written
    assert path.read_text() == DEBIAN_FILE
    with pytest.raises(Precondition) as caught:
        name.check()
    assert str(path) in str(caught.value) and "iqn.1993-08.org.debian:01:67b774ffb758" in str(caught.value)
    assert f"{NODE_BASE}:node-a" in str(caught.value)


def test_managed_file_is_rewritten_keeping_comments_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "initiatorname.iscsi"
    path.write_text(DEBIAN_FILE)
    os.chmod(path, 0o640)
    name = InitiatorName(str(path), f"{NODE_BASE}:node-a", manage=True)
    assert name.ensure()
    assert path.read_text() == DEBIAN_FILE.replace("iqn.1993-08.org.debian:01:67b774ffb758", f"{NODE_BASE}:node-a")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    name.check()
    assert not name.ensure()  # idempotent
    assert [p.name for p in tmp_path.iterdir()] == ["initiatorname.iscsi"]  # no temp file left behind


def test_managed_file_is_created_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "iscsi" / "initiatorname.iscsi"
    InitiatorName(str(path), f"{NODE_BASE}:node-a", manage=False).check()  # no open-iscsi: local volumes only
    assert not path.exists()
    name = InitiatorName(str(path), f"{NODE_BASE}:node-a", manage=True)
    assert name.ensure()
    assert path.read_text() == f"InitiatorName={NODE_BASE}:node-a\n"
    name.check()
