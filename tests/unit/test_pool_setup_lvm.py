"""pool_setup and pool_factory on real LVM2 with loop devices of their own (the rest of the pool set-up tests:
tests/unit/plugins/module_utils/test_pool_setup.py).

LVM runs with a private LVM_SYSTEM_DIR whose lvm.conf admits only this test's
loop devices and disables activation (no device-mapper here), so the host's
VGs are never seen. Not shipped with the collection's unit tests (galaxy.yml
build_ignore): what it covers runs scripted in test_lvm_pool_scripted.py and
test_pool_setup.py under ansible-test units, and here against the real tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator, List

import pytest

from basalt_core import lvm, pool_setup
from basalt_core.errors import InUse, InvalidRequest, Precondition
from basalt_core.lvm_pool import LvmPool
from basalt_core.model import Publication, Volume, volume_id_for
from basalt_core.pool_factory import open_pool, stored_settings
from basalt_core.pool_spec import DEFAULTS, PoolSettings, parse_pool_spec
from basalt_core.runner import run
from basalt_core.sizes import MiB

needs_lvm = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("vgcreate") is None,
                               reason="needs root, loop devices and lvm2")


# -- LVM pools on loop devices -----------------------------------------------------------

class Disks:
    def __init__(self, root: Path, count: int) -> None:
        self.devices: List[str] = []
        for index in range(count):
            image = root / f"disk{index}.img"
            with open(image, "wb") as handle:
                handle.truncate(64 * MiB)
            self.devices.append(run(["losetup", "--find", "--show", str(image)], what="attach").stdout.strip())
        (root / "lvm").mkdir()
        (root / "lvm" / "lvm.conf").write_text(lvm.isolated_config(self.devices) + "\n")
        self.settings = lvm.LvmSettings(system_dir=str(root / "lvm"))
        self.vg = f"basalt-ps-{uuid.uuid4().hex[:8]}"

    def lvm(self, *argv: str) -> str:
        return subprocess.run(list(argv), check=True, capture_output=True, text=True,
                              env={**os.environ, **self.settings.env()}).stdout

    def release(self) -> None:
        env = {**os.environ, **self.settings.env()}
        subprocess.run(["vgremove", "-ff", "-y", self.vg], capture_output=True, env=env)
        for device in self.devices:
            subprocess.run(["pvremove", "-ff", "-y", device], capture_output=True, env=env)
            subprocess.run(["losetup", "-d", device], capture_output=True)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Disks]:
    made = Disks(tmp_path, 2)
    try:
        yield made
    finally:
        made.release()


@needs_lvm
def test_lvm_pool_from_blank_disks_with_settings_and_a_sized_metadata_area(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    settings = PoolSettings(alloc="contiguous", activation="loop", snapshot_mode="cow", capacity_limit=40 * MiB)
    planned = pool_setup.ensure_pool(spec, settings, disks=disks.devices, max_volumes=2000, check_mode=True,
                                     lvm_settings=disks.settings)
    assert len(planned) == 1 and "8 MiB of metadata" in planned[0]
    assert disks.vg not in disks.lvm("vgs", "--noheadings", "-o", "vg_name")
    assert pool_setup.ensure_pool(spec, settings, disks=disks.devices, max_volumes=2000,
                                  lvm_settings=disks.settings) == planned
    for mda in disks.lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pv_mda_size",
                         *disks.devices).split():
        assert int(mda) >= 8 * MiB
    assert pool_setup.ensure_pool(spec, settings, disks=disks.devices, lvm_settings=disks.settings) == []

    pool = open_pool(spec, lvm_settings=disks.settings)  # as a module opens it: no settings given
    assert isinstance(pool, LvmPool) and pool.options == settings and pool.capacity_limit == 40 * MiB
    with pytest.raises(InvalidRequest, match="--lvm-activation dm"):
        open_pool(spec, {"activation": "dm"}, labels={"activation": "--lvm-activation"},
                  lvm_settings=disks.settings)
    state = pool_setup.describe_pool(parse_pool_spec(spec), lvm_settings=disks.settings)
    assert state.exists and state.disks == tuple(sorted(disks.devices)) and state.available_bytes == 40 * MiB

    changed = pool_setup.ensure_pool(spec, PoolSettings(alloc="contiguous", activation="loop"),
                                     lvm_settings=disks.settings)
    assert changed and changed[0].startswith("store settings")
    reopened = open_pool(spec, lvm_settings=disks.settings)
    assert isinstance(reopened, LvmPool) and reopened.options == PoolSettings(alloc="contiguous", activation="loop")


@needs_lvm
def test_a_disk_holding_a_signature_or_data_is_refused_unless_forced(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    run(["mkfs.ext4", "-q", disks.devices[0]], what="mkfs")
    with open(disks.devices[1], "r+b") as handle:  # no signature, but data in its last MiB
        handle.seek(64 * MiB - 4096)
        handle.write(b"precious")
    for device, found in ((disks.devices[0], "a ext4 filesystem"), (disks.devices[1], "data no signature explains")):
        with pytest.raises(Precondition, match=f"disk {device} holds {found}"):
            pool_setup.ensure_pool(spec, DEFAULTS, disks=[device], lvm_settings=disks.settings)
    assert disks.vg not in disks.lvm("vgs", "--noheadings", "-o", "vg_name")
    pool_setup.ensure_pool(spec, DEFAULTS, disks=disks.devices, force=True, lvm_settings=disks.settings)
    assert stored_settings(parse_pool_spec(spec), lvm_settings=disks.settings) == DEFAULTS


@needs_lvm
def test_an_orphan_pv_left_by_an_interrupted_run_is_taken(disks: Disks) -> None:
    disks.lvm("pvcreate", disks.devices[0])
    actions = pool_setup.ensure_pool(f"lvm:{disks.vg}", DEFAULTS, disks=disks.devices[:1],
                                     lvm_settings=disks.settings)
    assert actions and actions[0].startswith(f"create VG {disks.vg}")


@needs_lvm
def test_existing_vg_is_never_extended(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    pool_setup.ensure_pool(spec, DEFAULTS, disks=disks.devices[:1], lvm_settings=disks.settings)
    with pytest.raises(Precondition, match="never added"):
        pool_setup.ensure_pool(spec, DEFAULTS, disks=disks.devices, lvm_settings=disks.settings)


@needs_lvm
def test_lvm_pool_removal_refuses_volumes_unless_forced_and_clears_the_disks(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    settings = PoolSettings(alloc="contiguous", activation="loop")
    pool_setup.ensure_pool(spec, settings, disks=disks.devices, lvm_settings=disks.settings)
    pool = open_pool(spec, lvm_settings=disks.settings)
    pool.save_volume(Volume(id=volume_id_for("v"), name="v", size=4 * MiB, pool="lvm"))
    with pytest.raises(InUse, match="holds 1 volumes"):
        pool_setup.remove_pool(spec, lvm_settings=disks.settings)
    planned = pool_setup.remove_pool(spec, force=True, check_mode=True, lvm_settings=disks.settings)
    assert pool.volume_ids() == [volume_id_for("v")]
    assert pool_setup.remove_pool(spec, force=True, lvm_settings=disks.settings) == planned
    assert planned[-2:] == [f"remove the PV label from {d}" for d in sorted(disks.devices)]
    assert disks.lvm("pvs", "--noheadings", "-o", "pv_name").split() == []
    assert pool_setup.remove_pool(spec, lvm_settings=disks.settings) == []


@needs_lvm
def test_removal_leaves_a_vg_holding_lvs_basalt_did_not_make(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    pool_setup.ensure_pool(spec, DEFAULTS, disks=disks.devices, lvm_settings=disks.settings)
    disks.lvm("lvcreate", "--yes", "--zero", "n", "--wipesignatures", "n", "-L", "4m", "-n", "theirs", disks.vg)
    with pytest.raises(InUse):
        pool_setup.remove_pool(spec, force=True, lvm_settings=disks.settings)
    assert "theirs" in disks.lvm("lvs", "--noheadings", "-o", "lv_name", disks.vg)


@needs_lvm
def test_an_lv_with_a_full_record_takes_less_metadata_than_the_area_is_sized_for(disks: Disks) -> None:
    """Keeps pool_setup.LV_METADATA_BYTES honest: measured as the drop of the VG's free metadata space."""
    pool_setup.ensure_pool(f"lvm:{disks.vg}", DEFAULTS, disks=disks.devices[:1], max_volumes=100,
                           lvm_settings=disks.settings)

    def mda_free() -> int:
        return int(disks.lvm("vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_mda_free", disks.vg))

    pool = open_pool(f"lvm:{disks.vg}", lvm_settings=disks.settings)
    before, count = mda_free(), 8
    for index in range(count):
        name = f"pvc-{uuid.uuid4()}"  # the name external-provisioner gives, and the parameters it adds
        volume = Volume(id=volume_id_for(name), name=name, size=4 * MiB, pool="lvm", parameters={
            "csi.storage.k8s.io/pvc/name": f"data-postgres-{index}-with-a-longer-name",
            "csi.storage.k8s.io/pvc/namespace": "production-databases", "csi.storage.k8s.io/pv/name": name})
        pool.save_volume(volume)
        volume.state = "ready"
        volume.publications = {"worker-17.example.internal": Publication(readonly=False,
                                                                         access_mode="SINGLE_NODE_WRITER")}
        pool.save_volume(volume)
    per_lv = (before - mda_free()) / count
    assert 700 < per_lv < pool_setup.LV_METADATA_BYTES, per_lv
