#!/usr/bin/env python3
"""Benchmark the Basalt agent's LVM pool (loop or dm activation, or lvmthin) against the bare LVM commands.

Prints RATIOS (agent over gRPC / the same work done by hand), never asserts on
time: a benchmark is not a test. Needs root, loop devices, mounts and lvm2;
``--activation dm`` and ``--thin`` need device-mapper (the VM tier: bench/vm_bench.py).

    python3 bench/bench_lvm_pool.py [--rounds N] [--curve 10,100,1000] [--json OUT]
        [--activation loop|dm] [--thin]

It builds its own volume group on a sparse PV image of its workspace, attached
with ``losetup``, and runs every LVM command (its own and the agent's) with a
private ``LVM_SYSTEM_DIR`` whose lvm.conf is ``basalt_core.lvm.isolated_config``
of that one loop device: activation off, a device filter that admits only that
device, no backups, hints or devices file (with ``--activation dm`` or ``--thin``:
activation on, no monitoring). No other VG, PV or device is visible
to it. The shared helpers (workspace, agent process, samples, table, CSI
request builders) are imported from ``benchlib``.

Clean-up runs also on Ctrl-C, SIGTERM or an error, in the order bench/README.md gives
(agent, mounts, the PV's loop devices, VG, PV label, the PV's own loop device, workspace).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import secrets
import signal
import string
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if TYPE_CHECKING:  # mypy (scripts/lint.sh) sees the bench directory as the namespace package "bench"
    import bench.bench_file_pool as fp
    import bench.benchlib as bl
    import bench.command_profile as cp
else:  # the bench directory is not a package: found through sys.path
    import bench_file_pool as fp
    import benchlib as bl
    import command_profile as cp

from basalt_agent.proto import csi_pb2
from basalt_core import lvm
from basalt_core.errors import StorageError
from basalt_core.lvm_pool import LvmPool, lv_name
from basalt_core.model import READY, Volume, volume_id_for

MiB = 1 << 20
GiB = 1 << 30
VOLUME_SIZE = 64 * MiB  # benchmarks 1 and 3, and the volumes measured on the curve
FILL_SIZE = 4 * MiB  # the volumes that fill the VG for the curve
PV_IMAGE_SIZE = 64 * GiB  # sparse
DEFAULT_METADATA_SIZE = "64m"
DEFAULT_ROUNDS = 20
DEFAULT_CURVE = "10,100,1000"
DEFAULT_CURVE_SAMPLES = 10
DEFAULT_FILL_BUDGET = 900.0  # seconds of filling, in all, before the curve stops growing
FREE_EXTENTS = 256  # --fast-fill leaves at least these for the measured volumes (16 extents each)
THIN_POOL = "thinpool"
THIN_POOL_SIZE = "4g"


@dataclass(frozen=True)
class PoolKind:
    """What the agent serves and what the bare side runs for the same LV: ``loop`` (lvm pool, loop
    activation: no device-mapper), ``dm`` (lvm pool, device-mapper) or ``thin`` (lvmthin, device-mapper)."""

    name: str

    @property
    def device_mapper(self) -> bool:
        return self.name != "loop"

    def lvm_conf(self, pvs: Sequence[str]) -> str:
        """The private lvm.conf: only *pvs* visible; activation on with device-mapper (no dmeventd)."""
        conf = lvm.isolated_config(pvs)
        if not self.device_mapper:
            return conf
        return (conf.replace("global { activation = 0 }", "global { activation = 1 }")
                + " activation { monitoring = 0 udev_sync = 1 udev_rules = 1 }")

    def agent_pool_args(self, vg: str) -> List[str]:
        if self.name == "thin":
            return ["--pool", f"lvmthin:{vg}/{THIN_POOL}"]
        if self.name == "dm":
            return ["--pool", "lvm:" + vg, "--lvm-activation", "dm"]
        return ["--pool", "lvm:" + vg, "--lvm-activation", "loop", "--lvm-alloc", "contiguous"]

    def create_args(self, vg: str, name: str, size: int) -> List[str]:
        """The bare ``lvcreate`` of an LV of *size* bytes (dm: LVM activates and zeroes it, as the agent asks)."""
        if self.name == "thin":
            return ["lvcreate", "--yes", "--type", "thin", "-n", name, "-V", f"{size // MiB}m", "--thinpool",
                    THIN_POOL, vg]
        alloc = ["--alloc", "contiguous"] if self.name == "loop" else []
        return ["lvcreate", "--yes", "-n", name, "-L", f"{size // MiB}m", *alloc, vg]

    @property
    def create_floor(self) -> str:
        return {"loop": "lvcreate -L 64m --alloc contiguous", "dm": "lvcreate -L 64m",
                "thin": "lvcreate --type thin -V 64m"}[self.name]

    @property
    def label(self) -> str:
        return {"loop": "lvm, loop activation", "dm": "lvm, dm activation", "thin": "lvmthin"}[self.name]


LOOP = PoolKind("loop")


# -- LVM with the private config ------------------------------------------------

class PrivateLvm:
    """The private ``LVM_SYSTEM_DIR`` of this run and the one way its LVM commands run."""

    def __init__(self, system_dir: str, pvs: Sequence[str], kind: PoolKind = LOOP, backups: bool = False) -> None:
        self.system_dir = system_dir
        self.kind = kind
        self.pvs = list(pvs)
        self.pv = self.pvs[0]  # the agent's VG's; a second one holds the bare side's VG with --bare-vg
        os.makedirs(system_dir, exist_ok=True)
        conf = kind.lvm_conf(self.pvs)
        if backups:  # as LVM's defaults keep them (backup/backup=1), in the workspace
            conf = conf.replace("backup { backup = 0 archive = 0 }",
                                f'backup {{ backup = 1 backup_dir = "{system_dir}/backup" archive = 0 }}')
            if "backup = 1" not in conf:
                raise bl.BenchError(f"cannot turn LVM's backups on in {conf!r}")
        with open(os.path.join(system_dir, "lvm.conf"), "w", encoding="utf-8") as handle:
            handle.write(conf + "\n")
        self.settings = lvm.LvmSettings(system_dir=system_dir)
        self.env = {**os.environ, **self.settings.env()}

    def run(self, *argv: str) -> str:
        """Run an LVM tool with the private config only; return stdout; raise on failure."""
        if argv[0] not in cp.LVM_TOOLS:
            raise bl.BenchError(f"{argv[0]} is not an LVM tool")
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False, env=self.env,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise bl.BenchError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def run_to_commit(self, *argv: str) -> Tuple[float, float]:
        """Run an LVM tool like ``run``; seconds until it printed that its commit is done (lvcreate's
        ``Logical volume "X" created.``, lvremove's ``... successfully removed.``), and until its exit."""
        if argv[0] not in cp.LVM_TOOLS:
            raise bl.BenchError(f"{argv[0]} is not an LVM tool")
        start = bl.now()
        committed = None
        with subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
                              stdin=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            for line in proc.stdout:
                if committed is None and line.startswith("  Logical volume ") and \
                        line.rstrip().endswith((" created.", " successfully removed.")):
                    committed = bl.now() - start
            stderr = proc.stderr.read()
        ended = bl.now() - start
        if proc.returncode != 0 or committed is None:
            raise bl.BenchError(f"{' '.join(argv)} failed ({proc.returncode}): {stderr.strip()}")
        return committed, ended

    def location(self, vg: str, name: str) -> lvm.DataLocation:
        """Where *vg*/*name*'s bytes lie on the PV (for the bare ``losetup --offset --sizelimit``)."""
        found = lvm.logical_volume(vg, name, settings=self.settings)
        if found is None:
            raise bl.BenchError(f"{vg}/{name} does not exist")
        extent = lvm.volume_group(vg, settings=self.settings).extent_size
        return lvm.linear_location(found, lvm.physical_volumes(vg, settings=self.settings), extent)


class LvmWorkspace(bl.Workspace):
    """The file bench's workspace plus a VG on a PV image in it; ``cleanup`` removes both."""

    def __init__(self, base: Optional[str], kind: PoolKind = LOOP, backups: bool = False) -> None:
        super().__init__(base)
        self.kind = kind
        self.backups = backups
        self.pv_image = self.path("pv.img")
        self.lvm: Optional[PrivateLvm] = None
        self.vg: Optional[str] = None
        self.bare_vg: Optional[str] = None
        self.labelled: List[str] = []
        self.metadata_note = ""

    def make_vg(self, metadata_size: str, bare_vg: bool = False) -> str:
        """Sparse image, loop device, private lvm.conf, ``pvcreate`` and ``vgcreate``; return the VG name.
        *bare_vg*: an equal second PV and VG (:attr:`bare_vg`) for the bare side."""
        images = [self.pv_image, *([self.path("bare-pv.img")] if bare_vg else [])]
        pvs = []
        for image in images:
            bl.run(["truncate", "-s", str(PV_IMAGE_SIZE), image])
            pvs.append(bl.run(["losetup", "--find", "--show", image]).strip())
        self.lvm = PrivateLvm(self.path("lvm"), pvs, self.kind, self.backups)
        # The agent is a child of this process: it inherits the private config.
        os.environ.update(self.lvm.settings.env())
        metadata = [] if metadata_size == "default" else ["--metadatasize", metadata_size]
        names = []
        for index, pv in enumerate(pvs):
            self.lvm.run("pvcreate", *metadata, pv)
            self.labelled.append(pv)
            name = f"basalt-{'bench' if index == 0 else 'bare'}-{uuid.uuid4().hex[:8]}"
            if index == 0:
                self.vg = name  # from here on, clean-up removes it
            else:
                self.bare_vg = name
            self.lvm.run("vgcreate", name, pv)
            if self.kind.name == "thin":
                self.lvm.run("lvcreate", "--yes", "--type", "thin-pool", "-L", THIN_POOL_SIZE, "-n", THIN_POOL, name)
            names.append(name)
        return names[0]

    def volume_loops(self) -> List[str]:
        """Loop devices backed by the PV device: only this run's agent and bare side make them."""
        if self.lvm is None:
            return []
        lines = [line for pv in self.lvm.pvs for line in bl.run(["losetup", "-j", pv]).splitlines()]
        return sorted({line.split(":", 1)[0] for line in lines if line.strip()})

    def cleanup(self) -> List[str]:
        problems = self.stop_agents()
        self.release(self.volume_loops)  # the PV's own loop device stays until its VG is gone
        if self.volume_loops():
            problems.append(f"loop devices on the PV still attached: {', '.join(self.volume_loops())}")
        if self.lvm is not None:
            for vg in (self.vg, self.bare_vg):
                if vg is not None:
                    try:
                        if self.kind.device_mapper:  # its dm devices go first
                            self.lvm.run("vgchange", "-an", vg)
                        self.lvm.run("vgremove", "--force", "--force", vg)
                    except bl.BenchError as error:
                        problems.append(f"removing VG {vg}: {error}")
            for pv in self.labelled:
                try:
                    self.lvm.run("pvremove", "--yes", pv)
                except bl.BenchError as error:
                    problems.append(f"removing the PV label from {pv}: {error}")
        return problems + super().cleanup()


# -- the agent --------------------------------------------------------------------

class LvmAgent(cp.ProfiledAgent):
    """``python3 -m basalt_agent`` serving ``lvm:VG`` (loop activation and contiguous allocation, or dm) or
    ``lvmthin:VG/thinpool``, with a debug log."""

    def __init__(self, workspace: bl.Workspace, name: str, vg: str, kind: PoolKind = LOOP) -> None:
        super().__init__(workspace, name, "/nonexistent")
        self.args = ["--node-id", bl.NODE_ID, *kind.agent_pool_args(vg),
                     "--state-dir", os.path.join(self.home, "state"),
                     "--cleanup-grace", str(cp.CLEANUP_GRACE), "--log-level", "debug"]


# -- CSI request builders ---------------------------------------------------------

def create_volume(agent: bl.Agent, name: str, size: int) -> Any:
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=size, limit_bytes=size),
        volume_capabilities=[bl.mount_capability()],
    )
    return agent.controller.CreateVolume(request, timeout=bl.RPC_TIMEOUT).volume


def bare_create(private: PrivateLvm, vg: str, name: str, size: int) -> Tuple[float, float]:
    """The bare lvcreate: seconds to its commit line, and to its exit."""
    return private.run_to_commit(*private.kind.create_args(vg, name, size))


def bare_remove(private: PrivateLvm, vg: str, name: str) -> Tuple[float, float]:
    return private.run_to_commit("lvremove", "--yes", f"{vg}/{name}")


# -- benchmark 1 (and each level of 2): CreateVolume + DeleteVolume vs lvcreate + lvremove ---

def bench_create_delete(agent: LvmAgent, profiler: cp.Profiler, private: PrivateLvm, vg: str, rounds: int,
                        level: int, bench: str) -> List[bl.Row]:
    g_create, g_delete, g_pair = bl.Samples(), bl.Samples(), bl.Samples()
    b_create, b_delete, b_pair = bl.Samples(), bl.Samples(), bl.Samples()
    c_create, c_delete, c_pair = bl.Samples(), bl.Samples(), bl.Samples()  # the bare tools until their commit line

    def grpc_round(i: int) -> None:
        name = f"bench-cd-{level}-{i}-{uuid.uuid4().hex[:8]}"
        took_c, volume = profiler.call("CreateVolume", level, lambda: create_volume(agent, name, VOLUME_SIZE))
        took_d, _ = profiler.call("DeleteVolume", level, lambda: bl.delete_volume(agent, volume.volume_id))
        g_create.add(took_c)
        g_delete.add(took_d)
        g_pair.add(took_c + took_d)

    def bare_round(i: int) -> None:
        name = f"bare-cd-{level}-{i}-{uuid.uuid4().hex[:8]}"
        commit_c, took_c = bare_create(private, vg, name, VOLUME_SIZE)
        commit_d, took_d = bare_remove(private, vg, name)
        b_create.add(took_c)
        b_delete.add(took_d)
        b_pair.add(took_c + took_d)
        c_create.add(commit_c)
        c_delete.add(commit_d)
        c_pair.add(commit_c + commit_d)

    bl.interleave(rounds, [grpc_round, bare_round])
    return [
        bl.Row(bench, "CreateVolume", g_create, private.kind.create_floor, b_create),
        bl.Row(bench, "DeleteVolume", g_delete, "lvremove", b_delete),
        bl.Row(bench, "Create+Delete", g_pair, "lvcreate + lvremove", b_pair),
        bl.Row(bench, "CreateVolume", g_create, "lvcreate until its 'created' line", c_create),
        bl.Row(bench, "DeleteVolume", g_delete, "lvremove until its 'removed' line", c_delete),
        bl.Row(bench, "Create+Delete", g_pair, "both until their commit lines", c_pair),
    ]


# -- benchmark 2: the curve over fill levels ---------------------------------------------

@dataclass
class Fill:
    """Basalt volumes put into the VG so far, how long that took, and why it stopped early (if it did)."""

    count: int = 0
    seconds: float = 0.0
    per_create: bl.Samples = field(default_factory=bl.Samples)
    history: List[Dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def grow(self, agent: LvmAgent, profiler: cp.Profiler, target: int, budget: float) -> bool:
        """CreateVolume 4 MiB volumes up to *target*; False when the budget ran out or a create failed first."""
        segment = bl.Samples()
        start_count = self.count
        while self.count < target:
            if self.seconds >= budget:
                self._note(start_count, segment, stopped="budget")
                return False
            name = f"bench-fill-{self.count:05d}"
            try:
                took, _ = profiler.call("CreateVolume(fill)", self.count // 100 * 100,
                                        functools.partial(create_volume, agent, name, FILL_SIZE))
            except grpc.RpcError as error:
                self.error = f"CreateVolume of volume {self.count + 1} failed: {error.code()}: {error.details()}"
                self._note(start_count, segment, stopped="error")
                return False
            self.seconds += took
            self.count += 1
            segment.add(took)
            self.per_create.add(took)
            if self.count % 100 == 0:
                print(f"    filled {self.count} volumes in {self.seconds:.0f} s "
                      f"(last one {took * 1000:.0f} ms)", flush=True)
        self._note(start_count, segment, stopped="")
        return True

    def _note(self, start: int, segment: bl.Samples, stopped: str) -> None:
        self.history.append({"from": start, "to": self.count, "fill_seconds_total": self.seconds,
                             "segment": segment.summary(), "stopped_by": stopped})


def bench_curve(agent: LvmAgent, profiler: cp.Profiler, private: PrivateLvm, vg: str, levels: Sequence[int],
                samples: int, budget: float) -> Tuple[List[bl.Row], Dict[str, Any]]:
    rows: List[bl.Row] = []
    fill = Fill()
    reached: List[int] = []
    for level in levels:
        complete = fill.grow(agent, profiler, level, budget)
        if fill.error:
            print(f"[2] the fill stopped at {fill.count} volumes: {fill.error}", flush=True)
            break
        if not complete:
            print(f"[2] fill budget of {budget:.0f} s spent at {fill.count} volumes: "
                  f"level {level} is not reached; measuring at {fill.count}", flush=True)
        at = fill.count
        print(f"[2] {at} Basalt volumes in the VG (filled in {fill.seconds:.1f} s): "
              f"{samples} CreateVolume+DeleteVolume vs lvcreate+lvremove", flush=True)
        rows += bench_create_delete(agent, profiler, private, vg, samples, at, f"2 curve @ {at} volumes")
        reached.append(at)
        if not complete:
            break
    per_hundred = fill.seconds / fill.count * 100 if fill.count else float("nan")
    return rows, {"levels_asked": list(levels), "levels_measured": reached, "fill_volume_mib": FILL_SIZE // MiB,
                  "fill_count": fill.count, "fill_seconds": fill.seconds, "fill_seconds_per_100": per_hundred,
                  "fill_create": fill.per_create.summary(), "fill_history": fill.history, "budget_s": budget,
                  "fill_error": fill.error}


# -- benchmark 2 with --fast-fill: the VG's metadata written with N Basalt volumes in one commit ------------

def _lvm_uuid() -> str:
    """An LV id as LVM writes them: 32 letters and digits in groups of 6-4-4-4-4-4-6."""
    text = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    groups, at = [], 0
    for width in (6, 4, 4, 4, 4, 4, 6):
        groups.append(text[at:at + width])
        at += width
    return "-".join(groups)


def fill_lv_section(index: int, extent: int, created: int) -> str:
    """The metadata of fill volume *index*, as the agent's CreateVolume of a blank FILL_SIZE volume leaves it:
    the record's tags built by the pool itself (LvmPool._record_tags), one extent at *extent* of pv0."""
    name = f"bench-fill-{index:05d}"
    volume = Volume(id=volume_id_for(name), name=name, size=FILL_SIZE, pool="lvm", state=READY)
    tags = ", ".join(f'"{lvm.check_tag(tag)}"' for tag in LvmPool._record_tags("volume", volume))
    return (f"\t\t{lv_name(volume.id)} {{\n"
            f'\t\t\tid = "{_lvm_uuid()}"\n'
            '\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]\n'
            "\t\t\tflags = []\n"
            f"\t\t\ttags = [{tags}]\n"
            f"\t\t\tcreation_time = {created}\n"
            f'\t\t\tcreation_host = "{platform.node()}"\n'
            '\t\t\tallocation_policy = "contiguous"\n'
            "\t\t\tsegment_count = 1\n\n"
            "\t\t\tsegment1 {\n"
            "\t\t\t\tstart_extent = 0\n"
            f"\t\t\t\textent_count = {FILL_SIZE // (4 * MiB)}\n\n"
            '\t\t\t\ttype = "striped"\n'
            "\t\t\t\tstripe_count = 1\n\n"
            "\t\t\t\tstripes = [\n"
            f'\t\t\t\t\t"pv0", {extent}\n'
            "\t\t\t\t]\n"
            "\t\t\t}\n"
            "\t\t}\n\n")


def metadata_fill(private: PrivateLvm, workspace: LvmWorkspace, vg: str, start: int, count: int) -> float:
    """Add fill volumes *start* .. *start+count-1* to *vg* in one commit: ``vgcfgbackup -f``, their LV sections
    appended, ``vgcfgrestore -f`` (the private config's LVM). Volume i takes the extent ``pe_count - 1 - i`` of
    the VG's one PV, from its end down, so the measured creates keep the low extents (FREE_EXTENTS at least).
    No agent may run on *vg* meanwhile (it would hold a stale index): the caller restarts it. Returns the
    seconds it took."""
    began = bl.now()
    path = workspace.path(f"fill-{vg}.vg")
    private.run("lvm", "vgcfgbackup", "-f", path, vg)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    extent_mib = int(re.search(r"\bextent_size = (\d+)", text).group(1)) * 512 // MiB  # type: ignore[union-attr]
    if extent_mib * MiB != FILL_SIZE:
        raise bl.BenchError(f"{vg}: extents of {extent_mib} MiB, the fill assumes one extent per volume")
    pe_count = int(re.search(r"\bpe_count = (\d+)", text).group(1))  # type: ignore[union-attr]
    if start + count > pe_count - FREE_EXTENTS:
        raise bl.BenchError(f"{vg}: {start + count} fill volumes would leave fewer than {FREE_EXTENTS} of its "
                            f"{pe_count} extents free for the measured volumes")
    created = int(time.time())
    sections = "".join(fill_lv_section(i, pe_count - 1 - i, created) for i in range(start, start + count))
    if "\tlogical_volumes {\n" in text:
        text = text.replace("\tlogical_volumes {\n", "\tlogical_volumes {\n\n" + sections, 1)
    else:  # the VG's closing brace is the last one in the file
        end = text.rstrip().rfind("}")
        text = text[:end] + "\tlogical_volumes {\n\n" + sections + "\t}\n" + text[end:]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    private.run("lvm", "vgcfgrestore", "-f", path, vg)
    os.unlink(path)
    return bl.now() - began


def listed_volumes(agent: bl.Agent) -> int:
    """How many volumes the agent's ListVolumes answers, over all its pages."""
    count, token = 0, ""
    while True:
        page = agent.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=1000, starting_token=token),
                                            timeout=bl.RPC_TIMEOUT)
        count += len(page.entries)
        token = page.next_token
        if not token:
            return count


def bench_curve_fast(agent: LvmAgent, profiler: cp.Profiler, workspace: LvmWorkspace, private: PrivateLvm,
                     vg: str, levels: Sequence[int], samples: int) -> Tuple[List[bl.Row], Dict[str, Any]]:
    """The curve with each level written into the metadata (:func:`metadata_fill`), into the bare side's VG
    too (--bare-vg), so that the bare lvcreate/lvremove meet the same number of LVs. The agent is stopped for
    each fill and started again on the filled VG (its start-up to the first Probe is reported)."""
    rows: List[bl.Row] = []
    facts: Dict[str, Any] = {"levels": list(levels), "fill": [], "restart": []}
    filled = 0
    bare_vg = workspace.bare_vg or vg
    for level in levels:
        agent.stop()
        took = {"level": level, "agent_vg_s": metadata_fill(private, workspace, vg, filled, level - filled)}
        if workspace.bare_vg:
            took["bare_vg_s"] = metadata_fill(private, workspace, workspace.bare_vg, filled, level - filled)
        filled = level
        facts["fill"].append(took)
        mark = agent.log_mark()
        started = agent.start()
        commands = agent.commands_since(mark)  # up to the first answered Probe (and what runs beside it)
        listing = bl.now()
        seen = listed_volumes(agent)
        if seen != level:
            raise bl.BenchError(f"the agent lists {seen} volumes after {level} were written into {vg}'s metadata")
        facts["restart"].append({"level": level, "first_probe_s": started, "list_volumes_s": bl.now() - listing,
                                 "commands": [{"argv": c.argv, "ms": c.seconds * 1000} for c in commands]})
        print(f"[2] {level} Basalt volumes written into the metadata ({took['agent_vg_s']:.1f} s); agent "
              f"restarted: {started * 1000:.0f} ms to the first Probe, ListVolumes of all "
              f"{facts['restart'][-1]['list_volumes_s']:.1f} s; {samples} CreateVolume+DeleteVolume vs "
              f"lvcreate+lvremove", flush=True)
        volume = create_volume(agent, f"bench-warmup-{level}", VOLUME_SIZE)  # untimed: the first after start
        bl.delete_volume(agent, volume.volume_id)
        rows += bench_create_delete(agent, profiler, private, bare_vg, samples, level, f"2 curve @ {level} volumes")
    return rows, facts


# -- benchmark 3: stage + publish + unpublish + unstage -------------------------------------

RAW_STEPS = {
    "NodeStage": "losetup --offset --sizelimit PV + mkfs.ext4 + mount",
    "NodePublish": "mount --bind",
    "NodeUnpublish": "umount TARGET",
    "NodeUnstage": "umount STAGE + losetup -d",
}
# With device-mapper the LV's device is /dev/VG/LV, mapped and unmapped by LVM.
DM_RAW_STEPS = {**RAW_STEPS, "NodeStage": "lvchange -ay + mkfs.ext4 + mount",
                "NodeUnstage": "umount STAGE + lvchange -an"}


def bench_node(agent: LvmAgent, profiler: cp.Profiler, workspace: LvmWorkspace, private: PrivateLvm, vg: str,
               rounds: int, bare_vg: Optional[str] = None) -> List[bl.Row]:
    """*bare_vg*: where the bare side makes its LVs (default: the agent's VG, whose LV index each of them
    invalidates)."""
    mnt = workspace.mkdir("mnt", "node")
    basalt: Dict[str, bl.Samples] = {step: bl.Samples() for step in fp.NODE_STEPS}
    floor: Dict[str, bl.Samples] = {step: bl.Samples() for step in fp.NODE_STEPS}
    basalt_total, floor_total = bl.Samples(), bl.Samples()

    def grpc_round(i: int) -> None:
        volume = create_volume(agent, f"bench-node-{i}-{uuid.uuid4().hex[:8]}", VOLUME_SIZE)
        staging = os.path.join(mnt, f"g-stage-{i}")
        target = os.path.join(mnt, f"g-target-{i}")
        os.mkdir(staging)  # the CO creates the staging directory; the plugin creates the target
        vid = volume.volume_id
        took = {
            "NodeStage": profiler.call("NodeStage", 0, lambda: bl.stage(agent, vid, staging))[0],
            "NodePublish": profiler.call("NodePublish", 0, lambda: bl.publish(agent, vid, staging, target))[0],
            "NodeUnpublish": profiler.call("NodeUnpublish", 0, lambda: bl.unpublish(agent, vid, target))[0],
            "NodeUnstage": profiler.call("NodeUnstage", 0, lambda: bl.unstage(agent, vid, staging))[0],
        }
        bl.delete_volume(agent, vid)
        os.rmdir(staging)
        for step, seconds in took.items():
            basalt[step].add(seconds)
        basalt_total.add(sum(took.values()))

    dm = private.kind.device_mapper

    def raw_round(i: int) -> None:
        name = f"bare-node-{i}-{uuid.uuid4().hex[:8]}"
        lv = f"{bare_vg or vg}/{name}"
        bare_create(private, bare_vg or vg, name, VOLUME_SIZE)
        if dm:
            private.run("lvchange", "-an", lv)  # as the agent leaves a new volume: not mapped until staged
        else:
            where = private.location(bare_vg or vg, name)  # untimed: the bare side knows its offset in advance
        staging = os.path.join(mnt, f"r-stage-{i}")
        target = os.path.join(mnt, f"r-target-{i}")
        os.mkdir(staging)
        os.mkdir(target)
        took: Dict[str, float] = {}
        start = bl.now()
        if dm:
            private.run("lvchange", "-ay", lv)
            device = "/dev/" + lv
        else:
            device = bl.run(["losetup", "--find", "--show", "--offset", str(where.offset), "--sizelimit",
                             str(where.length), where.device]).strip()
        bl.run([*fp.MKFS_EXT4, device])
        bl.run(["mount", device, staging])
        took["NodeStage"] = bl.now() - start
        took["NodePublish"] = bl.timed(lambda: bl.run(["mount", "--bind", staging, target]))[0]
        took["NodeUnpublish"] = bl.timed(lambda: bl.run(["umount", target]))[0]
        start = bl.now()
        bl.run(["umount", staging])
        if dm:
            private.run("lvchange", "-an", lv)
        else:
            bl.run(["losetup", "-d", device])
        took["NodeUnstage"] = bl.now() - start
        os.rmdir(target)
        os.rmdir(staging)
        bare_remove(private, bare_vg or vg, name)
        for step, seconds in took.items():
            floor[step].add(seconds)
        floor_total.add(sum(took.values()))

    bl.interleave(rounds, [grpc_round, raw_round])
    name = "3 node stage..unstage ext4"
    steps = DM_RAW_STEPS if dm else RAW_STEPS
    rows = [bl.Row(name, step, basalt[step], steps[step], floor[step]) for step in fp.NODE_STEPS]
    rows.append(bl.Row(name, "all four", basalt_total, "the 8 commands", floor_total))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"rounds of benchmarks 1 and 3 (default {DEFAULT_ROUNDS})")
    parser.add_argument("--curve", default=DEFAULT_CURVE,
                        help=f"fill levels of benchmark 2, comma-separated (default {DEFAULT_CURVE}); '' skips it")
    parser.add_argument("--curve-samples", type=int, default=DEFAULT_CURVE_SAMPLES,
                        help=f"CreateVolume+DeleteVolume pairs per fill level (default {DEFAULT_CURVE_SAMPLES})")
    parser.add_argument("--fill-budget", type=float, default=DEFAULT_FILL_BUDGET,
                        help=f"seconds of filling before the curve stops growing (default {DEFAULT_FILL_BUDGET:.0f})")
    parser.add_argument("--fast-fill", action="store_true",
                        help="benchmark 2: write each level's volumes into the VG's metadata in one commit "
                        "(vgcfgbackup, their LV sections with Basalt's record tags, vgcfgrestore) instead of "
                        "CreateVolume, into the bare side's VG too with --bare-vg, and restart the agent at each "
                        "level: 10,000 volumes in minutes, not hours (--fill-budget does not apply)")
    parser.add_argument("--metadatasize", default=DEFAULT_METADATA_SIZE,
                        help=f"pvcreate --metadatasize (default {DEFAULT_METADATA_SIZE}; 'default' = LVM's own)")
    parser.add_argument("--skip", default="", help="comma list of benchmarks to skip: 1,2,3")
    parser.add_argument("--bare-vg", action="store_true",
                        help="benchmarks 1 and 3: the bare side on an equal VG of its own, so that the agent is its "
                        "VG's only writer (as on a host where only Basalt changes the pool's VG: its LV index stays "
                        "valid)")
    parser.add_argument("--backups", action="store_true",
                        help="LVM writes the VG's metadata backup (in the workspace) after each change, as LVM's "
                        "default configuration does; without it neither side writes one")
    parser.add_argument("--activation", choices=("loop", "dm"),
                        help="the lvm pool's --lvm-activation (default loop; dm needs device-mapper)")
    parser.add_argument("--thin", action="store_true",
                        help=f"an lvmthin pool instead (a {THIN_POOL_SIZE} thin pool {THIN_POOL} in the VG; "
                        "needs device-mapper): CreateVolume against a bare thin lvcreate -V")
    parser.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    parser.add_argument("--tmpdir", help="where to make the workspace (default: the system temp dir)")
    args = parser.parse_args(argv)
    if args.thin and args.activation == "loop":
        parser.error("--thin needs device-mapper: it takes no --activation loop")
    kind = PoolKind("thin" if args.thin else args.activation or "loop")
    try:
        levels = sorted({int(x) for x in args.curve.split(",") if x.strip()})
    except ValueError:
        parser.error("--curve takes comma-separated numbers of volumes")
    if args.rounds < 1 or args.curve_samples < 1 or any(level < 1 for level in levels):
        parser.error("--rounds, --curve-samples and the curve levels must be at least 1")
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    if os.geteuid() != 0:
        print("bench_lvm_pool: needs root (loop devices, mounts, LVM)", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, bl._raise_interrupt)
    workspace = LvmWorkspace(args.tmpdir, kind, args.backups)
    report: Dict[str, Any] = {"rounds": args.rounds, "curve_samples": args.curve_samples, "pool_kind": kind.name}

    def run() -> List[bl.Row]:
        rows: List[bl.Row] = []
        facts = bl.machine_facts(workspace)
        vg = workspace.make_vg(args.metadatasize, args.bare_vg)
        private = workspace.lvm
        assert private is not None
        pvs = lvm.physical_volumes(vg, settings=private.settings)
        group = lvm.volume_group(vg, settings=private.settings)
        facts.update(lvm=bl.run(["lvm", "version"]).splitlines()[0].split(":", 1)[1].strip(), vg=vg, pv=private.pv,
                     pv_image_gib=PV_IMAGE_SIZE // GiB, metadatasize=args.metadatasize,
                     pe_start=pvs[0].pe_start if pvs else None, extent_size=group.extent_size,
                     bare_vg=workspace.bare_vg, pool=kind.label)
        report["facts"] = facts
        print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)

        agent = LvmAgent(workspace, "lvm", vg, kind)
        report["agent_argv"] = agent.argv
        report["agent_start_s"] = agent.start()
        profiler = cp.Profiler(agent)
        # One untimed round of each side: warm caches, imports and the agent's thread pool.
        volume = create_volume(agent, "bench-warmup", VOLUME_SIZE)
        bl.delete_volume(agent, volume.volume_id)
        bare_create(private, workspace.bare_vg or vg, "bare-warmup", VOLUME_SIZE)
        bare_remove(private, workspace.bare_vg or vg, "bare-warmup")

        if "1" not in skip:
            print(f"[1] CreateVolume + DeleteVolume 64 MiB vs lvcreate + lvremove, {args.rounds} rounds", flush=True)
            rows += bench_create_delete(agent, profiler, private, workspace.bare_vg or vg, args.rounds, 0,
                                        "1 create/delete 64 MiB")
        if "3" not in skip:
            print(f"[3] NodeStage..NodeUnstage ({kind.label}) vs bare commands, {args.rounds} rounds", flush=True)
            rows += bench_node(agent, profiler, workspace, private, vg, args.rounds, workspace.bare_vg)
        if "2" not in skip and levels and args.fast_fill:
            print(f"[2] curve at {levels} Basalt volumes ({FILL_SIZE // MiB} MiB each), written into the metadata",
                  flush=True)
            curve_rows, report["curve_fast"] = bench_curve_fast(agent, profiler, workspace, private, vg, levels,
                                                                args.curve_samples)
            rows += curve_rows
            for restart in report["curve_fast"]["restart"]:
                print(f"agent start-up with {restart['level']} volumes: {restart['first_probe_s'] * 1000:.0f} ms "
                      f"to the first Probe ({len(restart['commands'])} commands before it answered)")
        elif "2" not in skip and levels:
            print(f"[2] curve at {levels} Basalt volumes ({FILL_SIZE // MiB} MiB each), fill budget "
                  f"{args.fill_budget:.0f} s", flush=True)
            curve_rows, report["curve"] = bench_curve(agent, profiler, private, vg, levels, args.curve_samples,
                                                      args.fill_budget)
            rows += curve_rows
            agent.stop()
            print(f"[2] agent restart with {report['curve']['fill_count']} volumes in the VG", flush=True)
            mark = agent.log_mark()
            report["restart_with_fill_s"] = agent.start()
            report["restart_commands"] = [{"argv": c.argv, "ms": c.seconds * 1000}
                                          for c in agent.commands_since(mark)]

        print()
        print(bl.table(rows))
        curve = report.get("curve")
        if curve:
            print()
            fill_create = curve["fill_create"]
            print(f"filling to {curve['fill_count']} volumes took {curve['fill_seconds']:.1f} s "
                  f"(CreateVolume of {curve['fill_volume_mib']} MiB: median {fill_create.get('median_ms', 0):.0f}"
                  f" ms, max {fill_create.get('max_ms', 0):.0f} ms); asked {curve['levels_asked']}, "
                  f"measured at {curve['levels_measured']}")
            for part in curve["fill_history"]:
                seg = part["segment"]
                if seg.get("n"):
                    print(f"  {part['from']:>5} -> {part['to']:>5}: median {seg['median_ms']:.0f} ms per CreateVolume, "
                          f"p90 {seg['p90_ms']:.0f} ms, {part['fill_seconds_total']:.1f} s total so far")
            if curve["fill_error"]:
                print(f"the fill stopped early: {curve['fill_error']}")
            print(f"agent restart with {curve['fill_count']} volumes: {report['restart_with_fill_s'] * 1000:.0f} ms "
                  f"to the first Probe ({len(report['restart_commands'])} commands at start-up)")
        profiles = sorted(profiler.profiles.values(), key=lambda p: (p.rpc.startswith("Node"), p.rpc, p.level))
        print()
        print("external commands per RPC, from the agent's debug log (median sample; lvm ms = time inside LVM tools)")
        print(cp.command_table(profiles))
        print()
        for line in cp.sequences(profiles, vg):
            print(line)
        report["commands_per_rpc"] = [p.to_json() for p in profiles]
        return rows

    return bl.run_reported("bench_lvm_pool", run, workspace, report, args.json,
                           errors=(bl.BenchError, grpc.RpcError, StorageError))


if __name__ == "__main__":
    sys.exit(main())
