"""Property-based fuzzing of every CSI RPC against a real agent (hypothesis).

A ``World`` is an agent with real objects to aim at: a staged and published
filesystem volume, a staged and published block volume, a volume only
created, a snapshot, an inline ephemeral volume, and a sandbox of files,
directories and symlinks (some pointing at the volumes' mounts, at a decoy
directory outside the agent's root and at ``/etc``).  Each example sends one
request to one RPC: generated from the message's descriptor, a valid request
with one or two fields replaced, or raw bytes (random, or a valid request's
bytes mutated, its paths left out: a flipped byte in a path names a real
place outside the root).  Every value comes from pools of hostile and meaningful
values: empty, huge, Unicode, NUL-carrying and option-like strings, path
traversal, symlinks, other volumes' ids and paths, overflowing capacities,
unknown enum values, contradictory capabilities.

Secrets and mount flags carry sentinels that no error message and no line
of the agent's (debug) log may show.  Paths come from pools: a stage or publish only gets paths inside the
agent's root (or ones it must refuse), the calls that remove or look get
``/``, ``/etc``, the decoy too.  After every call: the code is one the spec
allows for that RPC, the call
finished within its deadline, the agent still runs, and nothing outside the
agent's root was mounted, unmounted or removed.  The agent runs in its own
mount namespace (``unshare --mount --propagation private``): its mount table
(``/proc/<pid>/mountinfo``) then changes only through the agent itself, so
it can be compared exactly while other tests mount and unmount on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from basalt_csi_testlib import (
    AM,
    EPHEMERAL_KEY,
    SC,
    Agent,
    MiB,
    block_cap,
    code_of,
    csi,
    loop_table,
    loops_under,
    mount_cap,
    unique,
)
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

NAMESPACED = ["unshare", "--mount", "--propagation", "private", "--"]
CALL_TIMEOUT = 60.0
EXAMPLES_ENV = "BASALT_FUZZ_EXAMPLES"

_COMMON = {SC.OK, SC.INVALID_ARGUMENT, SC.ABORTED}
# The codes the spec gives each RPC (its error tables and the general Error Scheme); anything else
# (UNKNOWN, INTERNAL, DEADLINE_EXCEEDED...) is a failure.
ALLOWED: dict[str, set[grpc.StatusCode]] = {
    "GetPluginInfo": {SC.OK},
    "GetPluginCapabilities": {SC.OK},
    "Probe": {SC.OK, SC.FAILED_PRECONDITION},
    "CreateVolume": _COMMON | {SC.NOT_FOUND, SC.ALREADY_EXISTS, SC.RESOURCE_EXHAUSTED, SC.OUT_OF_RANGE},
    "DeleteVolume": _COMMON | {SC.FAILED_PRECONDITION},
    "ControllerPublishVolume": _COMMON | {SC.NOT_FOUND, SC.ALREADY_EXISTS, SC.FAILED_PRECONDITION,
                                          SC.RESOURCE_EXHAUSTED},
    "ControllerUnpublishVolume": _COMMON | {SC.NOT_FOUND},
    "ValidateVolumeCapabilities": _COMMON | {SC.NOT_FOUND},
    "ListVolumes": _COMMON,
    "GetCapacity": _COMMON,
    "ControllerGetCapabilities": {SC.OK},
    "CreateSnapshot": _COMMON | {SC.NOT_FOUND, SC.ALREADY_EXISTS, SC.RESOURCE_EXHAUSTED, SC.FAILED_PRECONDITION},
    "DeleteSnapshot": _COMMON | {SC.FAILED_PRECONDITION},
    "ListSnapshots": _COMMON,
    "GetSnapshot": _COMMON | {SC.NOT_FOUND},
    "ControllerExpandVolume": _COMMON | {SC.NOT_FOUND, SC.FAILED_PRECONDITION, SC.OUT_OF_RANGE,
                                         SC.RESOURCE_EXHAUSTED},
    "ControllerGetVolume": _COMMON | {SC.NOT_FOUND},
    "ControllerModifyVolume": {SC.UNIMPLEMENTED},  # MODIFY_VOLUME is not advertised
    "NodeStageVolume": _COMMON | {SC.NOT_FOUND, SC.ALREADY_EXISTS, SC.FAILED_PRECONDITION},
    "NodeUnstageVolume": _COMMON | {SC.NOT_FOUND, SC.FAILED_PRECONDITION},
    "NodePublishVolume": _COMMON | {SC.NOT_FOUND, SC.ALREADY_EXISTS, SC.FAILED_PRECONDITION,
                                    SC.OUT_OF_RANGE, SC.RESOURCE_EXHAUSTED},
    "NodeUnpublishVolume": _COMMON | {SC.NOT_FOUND, SC.FAILED_PRECONDITION},
    "NodeGetVolumeStats": _COMMON | {SC.NOT_FOUND},
    "NodeExpandVolume": _COMMON | {SC.NOT_FOUND, SC.FAILED_PRECONDITION, SC.OUT_OF_RANGE},
    "NodeGetCapabilities": {SC.OK},
    "NodeGetInfo": {SC.OK, SC.FAILED_PRECONDITION},
}
SERVICES = ("Identity", "Controller", "Node")
# The calls that mount, unmount and remove are drawn this many times as often as the others.
WEIGHTS = {"NodeStageVolume": 4, "NodePublishVolume": 4, "NodeUnpublishVolume": 4, "NodeUnstageVolume": 4,
           "NodeGetVolumeStats": 2, "NodeExpandVolume": 2, "CreateVolume": 2, "DeleteVolume": 2,
           "ControllerPublishVolume": 2}
# How a request is made (see World.exercise), "aimed" twice as often: it reaches the deepest code.
HOWS = ["generated", "mutated", "aimed", "aimed", "bytes"]


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request: Descriptor

    @property
    def path(self) -> str:
        return f"/csi.v1.{self.service}/{self.name}"


def rpcs() -> list[Rpc]:
    found = []
    for service in SERVICES:
        for method in csi.DESCRIPTOR.services_by_name[service].methods:
            assert method.name in ALLOWED, f"no allowed codes for {method.name}"
            found.append(Rpc(service, method.name, method.input_type))
    return found


HOSTILE = [
    "", " ", ".", "..", "/", "-x", "--help", "-o", "--bind", "x" * 129, "x" * 5000, "é" * 65, "\u202e\u202d",
    "😀" * 40, "a\x00b", "\x00", "\n", "$(id)", "`id`", "; rm -rf /", "../../../etc/passwd", "%s%n", "\\",
    "C:\\", "vol-", "snap-", "vol-00000000-0000-0000-0000-000000000000", "vol-../../x",
]
CAPACITIES = [0, 1, 511, 4096, MiB - 1, MiB, 8 * MiB, 300 * MiB, 1 << 31, 1 << 40, 1 << 62, (1 << 63) - 1, -1,
              -(1 << 63)]
SIZE_TEXTS = ["", "0", "1", "16Mi", "1G", "10Gi", "64Zi", "-5Mi", "1e3", "lots", "16mi", "0x10", "9" * 40]
# Sent in every secrets map and among the mount flags: neither may reach the log or an error message.
SECRET_SENTINEL = "FuzzSecret-SENTINEL-7731"
FLAG_SENTINEL = "FuzzFlag-SENTINEL-4409"
MOUNT_FLAGS = [f"secretopt={FLAG_SENTINEL}", f"bad opt={FLAG_SENTINEL}",
               "ro", "rw", "nosuid", "noatime", "discard", "rw,nosuid", "-o", "--bind", "bind", "remount",
               "foo=bar", "a\x00b", "x" * 5000, "errors=remount-ro", "uid=0", "context=system_u", ",,", " ro"]
FS_TYPES = ["", "ext4", "xfs", "btrfs", "vfat", "EXT4", "ext4 ", "-t", "ext4\x00", "none", "proc", "bind"]


def text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=max_size)


@dataclass
class World:
    """An agent and the objects the fuzzer aims at; see the module doc."""

    agent: Agent
    sandbox: str
    decoy: str
    ids: list[str] = field(default_factory=list)
    snapshot_ids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)
    aim_paths: list[str] = field(default_factory=list)  # well-formed paths inside the root, links among them
    safe_paths: list[str] = field(default_factory=list)  # where a stage or publish may create things
    paths: list[str] = field(default_factory=list)  # anything, for the calls that remove or look
    templates: list[tuple[str, Message]] = field(default_factory=list)
    mounts_outside: list[tuple[str, ...]] = field(default_factory=list)
    decoy_listing: list[tuple[str, str]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)  # "RPC CODE" -> count, for the run's summary

    # -- set-up ---------------------------------------------------------------
    @classmethod
    def build(cls, agent: Agent, decoy: str, node_ids: tuple[str, ...] = ()) -> World:
        """The world around a started *agent*; *decoy* comes from make_decoy(), made before the agent started."""
        sandbox = os.path.join(agent.root, "fuzz")
        os.makedirs(sandbox)
        world = cls(agent, sandbox, decoy, node_ids=[agent.node_id, *node_ids])
        world._populate()
        world.mounts_outside = world.outside_mounts()
        world.decoy_listing = world.listing()
        return world

    def _populate(self) -> None:
        a = self.agent
        with open(os.path.join(self.sandbox, "file"), "w") as handle:
            handle.write("keep")
        os.makedirs(os.path.join(self.sandbox, "dir"))
        os.makedirs(os.path.join(self.sandbox, "full"))
        with open(os.path.join(self.sandbox, "full", "x"), "w") as handle:
            handle.write("keep")
        fs, blk = mount_cap("ext4"), block_cap()
        v_fs, v_blk, v_idle, *spare = (a.create_volume(8 * MiB, cap=c, name=unique("fuzz"))
                                       for c in (fs, blk, fs, fs, blk))
        self.ids += [v.volume_id for v in (v_fs, v_blk, v_idle, *spare)]
        staged = {}
        for vol, cap in ((v_fs, fs), (v_blk, blk)):
            a.ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
                volume_id=vol.volume_id, node_id=a.node_id, volume_capability=cap))
            staging = a.stage(vol.volume_id, cap)
            target = a.publish(vol.volume_id, cap, staging)
            staged[vol.volume_id] = (staging, target)
            self.paths += [staging, target]
        eph_id, eph_target = unique("csi-eph"), a.path("eph")
        a.node.NodePublishVolume(csi.NodePublishVolumeRequest(
            volume_id=eph_id, target_path=eph_target, volume_capability=fs,
            volume_context={EPHEMERAL_KEY: "true", "size": "8Mi"}))
        self.ids.append(eph_id)
        self.paths.append(eph_target)
        code, snap = code_of(a.ctl.CreateSnapshot, csi.CreateSnapshotRequest(
            source_volume_id=v_idle.volume_id, name=unique("fuzz-snap")))
        if code == SC.OK:
            self.snapshot_ids.append(snap.snapshot.snapshot_id)
        links = {"link-decoy": self.decoy, "link-etc": "/etc", "link-target": staged[v_fs.volume_id][1],
                 "link-staging": staged[v_fs.volume_id][0], "link-file": os.path.join(self.decoy, "in-decoy"),
                 "link-dir": os.path.join(self.sandbox, "dir"), "link-decoy-mount": os.path.join(self.decoy, "mnt")}
        for name, to in links.items():
            os.symlink(to, os.path.join(self.sandbox, name))
        inside = [os.path.join(self.sandbox, p) for p in ("file", "dir", "full", "dir/new", "fresh-a", "fresh-b")]
        through_links = [os.path.join(self.sandbox, name, "sub") for name in links] + \
            [os.path.join(self.sandbox, name) for name in links]
        self.aim_paths = inside + through_links + self.paths
        self.safe_paths = [
            *self.aim_paths, "relative/path", os.path.join(self.sandbox, "..", "..", "etc"), self.sandbox + "/./x",
            self.sandbox + "//double", self.sandbox + "/" + "x" * 300, self.sandbox + "/-x",
            self.sandbox + "/é\u202e", self.sandbox + "/a\x00b", "", "-x", "--bind"]
        outside = ["/", "/etc", "/etc/passwd", "/proc/self", "/dev/null", "/tmp", self.decoy,
                   *(os.path.join(self.decoy, name) for name in ("in-decoy", "empty-dir", "mnt", "mnt/inside"))]
        self.paths = [*self.safe_paths, *outside]
        self.names = [v_fs.volume_context.get("csi.storage.k8s.io/pv/name", ""), unique("fuzz")] + \
            [v.volume_id for v in (v_fs,)]
        fs_stage = csi.NodeStageVolumeRequest(volume_id=v_idle.volume_id, volume_capability=fs,
                                              staging_target_path=os.path.join(self.sandbox, "fresh-a"))
        self.templates = [
            ("CreateVolume", csi.CreateVolumeRequest(name=unique("fuzz"), volume_capabilities=[fs],
                                                     capacity_range=csi.CapacityRange(required_bytes=8 * MiB))),
            ("DeleteVolume", csi.DeleteVolumeRequest(volume_id=unique("vol"))),
            ("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
                volume_id=v_idle.volume_id, node_id=a.node_id, volume_capability=fs)),
            ("ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest(
                volume_id=v_fs.volume_id, node_id=a.node_id)),
            ("ValidateVolumeCapabilities", csi.ValidateVolumeCapabilitiesRequest(
                volume_id=v_fs.volume_id, volume_capabilities=[fs])),
            ("ControllerExpandVolume", csi.ControllerExpandVolumeRequest(
                volume_id=v_fs.volume_id, capacity_range=csi.CapacityRange(required_bytes=16 * MiB))),
            ("CreateSnapshot", csi.CreateSnapshotRequest(source_volume_id=v_idle.volume_id, name=unique("s"))),
            ("NodeStageVolume", fs_stage),
            # the sentinels once for certain: a flag the mount refuses, one the agent refuses, secrets
            ("NodeStageVolume", csi.NodeStageVolumeRequest(
                volume_id=v_idle.volume_id, staging_target_path=os.path.join(self.sandbox, "fresh-a"),
                volume_capability=mount_cap("ext4", flags=[MOUNT_FLAGS[0]]), secrets={"password": SECRET_SENTINEL})),
            ("CreateVolume", csi.CreateVolumeRequest(name=unique("fuzz"), secrets={"password": SECRET_SENTINEL},
                                                     volume_capabilities=[mount_cap("ext4", flags=[MOUNT_FLAGS[1]])])),
            ("NodeUnstageVolume", csi.NodeUnstageVolumeRequest(
                volume_id=v_fs.volume_id, staging_target_path=staged[v_fs.volume_id][0])),
            ("NodePublishVolume", csi.NodePublishVolumeRequest(
                volume_id=v_fs.volume_id, staging_target_path=staged[v_fs.volume_id][0],
                target_path=os.path.join(self.sandbox, "fresh-b"), volume_capability=fs)),
            ("NodePublishVolume", csi.NodePublishVolumeRequest(
                volume_id=unique("csi-eph"), target_path=os.path.join(self.sandbox, "fresh-b"),
                volume_capability=fs, volume_context={EPHEMERAL_KEY: "true", "size": "8Mi"})),
            ("NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(
                volume_id=v_blk.volume_id, target_path=staged[v_blk.volume_id][1])),
            ("NodeGetVolumeStats", csi.NodeGetVolumeStatsRequest(
                volume_id=v_fs.volume_id, volume_path=staged[v_fs.volume_id][1])),
            ("NodeExpandVolume", csi.NodeExpandVolumeRequest(
                volume_id=v_fs.volume_id, volume_path=staged[v_fs.volume_id][1],
                capacity_range=csi.CapacityRange(required_bytes=16 * MiB))),
        ]

    # -- what must not change -------------------------------------------------
    def _under_root(self, path: str) -> bool:
        return path == self.agent.root or path.startswith(self.agent.root + "/")

    def outside_mounts(self) -> list[tuple[str, ...]]:
        """The agent's mount table outside its root, as its own namespace sees it."""
        assert self.agent.proc is not None
        with open(f"/proc/{self.agent.proc.pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            rows = [line.split(" - ")[0].split()[2:5] for line in handle]
        return sorted(tuple(r) for r in rows if not self._under_root(r[2].replace("\\040", " ")))

    def _watched(self, mount_point: str) -> bool:
        return not mount_point.startswith("/tmp/") or mount_point.startswith(self.decoy + "/")

    def listing(self) -> list[tuple[str, str]]:
        found = []
        for top, dirs, files in os.walk(self.decoy):
            for name in dirs + files:
                path = os.path.join(top, name)
                kind = "link" if os.path.islink(path) else "dir" if os.path.isdir(path) else "file"
                found.append((os.path.relpath(path, self.decoy), kind))
        return sorted(found)

    def check_untouched(self, what: str) -> None:
        assert self.agent.proc is not None and self.agent.proc.poll() is None, f"the agent died after {what}"
        now = self.outside_mounts()
        # Other tests' mounts come and go in the agent's table too (deleting a directory detaches the
        # mounts on it in every namespace, and tests under /tmp do that all the time), so a mount counts
        # as gone only outside /tmp (or in the decoy) and while its directory is still there; any new
        # mount outside the root can only be the agent's.
        gone = [m for m in set(self.mounts_outside) - set(now) if self._watched(m[2]) and os.path.lexists(m[2])]
        new = sorted(set(now) - set(self.mounts_outside))
        assert not gone and not new, f"{what} changed mounts outside the agent's root: gone {gone}, new {new}"
        self.mounts_outside = now
        assert self.listing() == self.decoy_listing, f"{what} changed the decoy directory outside the root"
        for path in ("/etc/passwd", "/etc", "/tmp", "/dev/null"):
            assert os.path.lexists(path), f"{what} removed {path}"

    # -- values ---------------------------------------------------------------
    def strings_for(self, name: str, rpc: str) -> st.SearchStrategy[str]:
        hostile = st.sampled_from(HOSTILE) | text()
        if name.endswith("path"):
            creating = rpc in ("NodeStageVolume", "NodePublishVolume")
            return st.sampled_from(self.safe_paths if creating else self.paths)
        if name in ("volume_id", "source_volume_id"):
            return st.sampled_from(self.ids + self.snapshot_ids) | st.builds(lambda: unique("vol")) | hostile
        if name == "snapshot_id":
            return st.sampled_from(self.snapshot_ids + self.ids) | hostile if self.snapshot_ids else hostile
        if name == "node_id":
            return st.sampled_from(self.node_ids) | hostile
        if name == "name":
            return st.sampled_from(self.names) | st.builds(lambda: unique("fuzz")) | hostile
        if name == "fs_type":
            return st.sampled_from(FS_TYPES) | hostile
        if name == "mount_flags":
            return st.sampled_from(MOUNT_FLAGS) | hostile
        return hostile

    def map_for(self, name: str) -> st.SearchStrategy[dict[str, str]]:
        keys = st.sampled_from([EPHEMERAL_KEY, "size", "basalt.dev/pool", "basalt.dev/copy-method",
                                "csi.storage.k8s.io/pvc/name", "csi.storage.k8s.io/serviceAccount.tokens",
                                "basalt.dev/storage-node", "password", "node.session.auth.password",
                                "node.session.auth.username"]) | st.sampled_from(HOSTILE) | text(20)
        values = st.sampled_from(["true", "false", *SIZE_TEXTS, *HOSTILE]) | text()
        if name == "secrets":
            values = st.just(SECRET_SENTINEL) | values
        return st.dictionaries(keys, values, max_size=4)

    def value_for(self, fd: FieldDescriptor, rpc: str, depth: int) -> st.SearchStrategy[Any]:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            return self.map_for(fd.name)
        single = self._single(fd, rpc, depth)
        if fd.is_repeated:
            return st.lists(single, max_size=3)
        return single

    def _single(self, fd: FieldDescriptor, rpc: str, depth: int) -> st.SearchStrategy[Any]:
        if fd.type == FieldDescriptor.TYPE_STRING:
            return self.strings_for(fd.name, rpc)
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if fd.type == FieldDescriptor.TYPE_ENUM:
            known = [v.number for v in fd.enum_type.values]
            return st.sampled_from([*known, 99, 1000, -7])  # unknown values too (proto3 enums are open)
        if fd.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32):
            limit = (1 << 31) if fd.type == FieldDescriptor.TYPE_INT32 else (1 << 63)
            return st.sampled_from([c for c in CAPACITIES if -limit <= c < limit]) | \
                st.integers(-limit, limit - 1)
        if fd.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.full_name == "csi.v1.VolumeCapability":
                return self.capability() | self.message(fd.message_type, rpc, depth + 1)
            return self.message(fd.message_type, rpc, depth + 1)
        return st.nothing()

    def capability(self) -> st.SearchStrategy[Message]:
        """Capabilities as a CO would send them, and contradictory ones."""
        modes = st.sampled_from([*list(AM.Mode.values()), 42])
        flags = st.lists(st.sampled_from(MOUNT_FLAGS), max_size=3)
        mount = st.builds(lambda fs, mode, fl: mount_cap(fs, mode, fl), st.sampled_from(FS_TYPES), modes, flags)
        block = st.builds(block_cap, modes)
        return mount | block

    def message(self, descriptor: Descriptor, rpc: str, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(descriptor)
        if depth > 3:
            return st.just(cls())
        fields = {fd.name: st.none() | self.value_for(fd, rpc, depth) for fd in descriptor.fields}
        return st.fixed_dictionaries(fields).map(lambda values: _build(cls, values))

    # -- one example ----------------------------------------------------------
    def exercise(self, data: Any, methods: list[Rpc]) -> None:
        rpc = data.draw(st.sampled_from([m for m in methods for _ in range(WEIGHTS.get(m.name, 1))]), label="rpc")
        templates = [t for name, t in self.templates if name == rpc.name]
        how = data.draw(st.sampled_from(HOWS if templates else ["generated", "bytes"]), label="how")
        if how == "bytes":
            seed = _without_paths(templates[0]).SerializeToString() if templates else b""
            payload = data.draw(st.binary(max_size=256) | mutated_bytes(seed), label="bytes")
            code, details = self.send_bytes(rpc, payload)
            allowed = ALLOWED[rpc.name] | {SC.INVALID_ARGUMENT}
        else:
            if how in ("mutated", "aimed"):
                request = type(templates[0])()
                request.CopyFrom(data.draw(st.sampled_from(templates), label="template"))
                if how == "aimed":
                    self.aim(data, request, rpc.name)
                else:
                    for _ in range(data.draw(st.integers(1, 2), label="mutations")):
                        self.mutate(data, request, rpc.name)
            else:
                request = data.draw(self.message(rpc.request, rpc.name, 0), label="request")
            code, details = self.send(rpc, request)
            allowed = ALLOWED[rpc.name]
        self.judge(rpc, how, code, details, allowed)

    def judge(self, rpc: Rpc, how: str, code: grpc.StatusCode, details: str, allowed: set[grpc.StatusCode]) -> None:
        self.calls[rpc.name] = self.calls.get(rpc.name, 0) + 1
        key = f"{rpc.name} {code.name}"
        self.answers[key] = self.answers.get(key, 0) + 1
        assert code in allowed, f"{rpc.name} ({how}) answered {code.name}: {details!r}"
        for sentinel in (SECRET_SENTINEL, FLAG_SENTINEL):
            assert sentinel not in details, f"{rpc.name} ({how}) echoed a secret or mount flag: {details!r}"
        self.check_untouched(f"{rpc.name} ({how})")

    def exercise_each(self, methods: list[Rpc]) -> None:
        """Every RPC once with an empty request, and once with each of its valid templates."""
        for rpc in methods:
            requests = [message_factory.GetMessageClass(rpc.request)()]
            requests += [t for name, t in self.templates if name == rpc.name]
            for request in requests:
                code, details = self.send(rpc, request)
                self.judge(rpc, "empty" if not request.ListFields() else "template", code, details, ALLOWED[rpc.name])

    def aim(self, data: Any, request: Message, rpc: str) -> None:
        """A well-formed request pointed elsewhere: each id and path replaced by another world's one."""
        for fd in request.DESCRIPTOR.fields:
            if (fd.name.endswith("path") or fd.name.endswith("volume_id")) and data.draw(st.booleans(), label="aim"):
                pool = (self.aim_paths if rpc in ("NodeStageVolume", "NodePublishVolume") else self.paths) \
                    if fd.name.endswith("path") else self.ids
                _assign(request, fd, data.draw(st.sampled_from(pool), label=fd.name))

    def mutate(self, data: Any, request: Message, rpc: str) -> None:
        """Replace one field, top-level or inside a set sub-message, with a drawn value."""
        target = request
        nested = [fd for fd, _v in request.ListFields() if fd.type == FieldDescriptor.TYPE_MESSAGE
                  and not fd.is_repeated]
        if nested and data.draw(st.booleans(), label="nested"):
            target = getattr(request, data.draw(st.sampled_from(nested), label="into").name)
        present = [fd for fd, _v in target.ListFields()]
        every = list(target.DESCRIPTOR.fields)
        fd = data.draw(st.sampled_from(present) | st.sampled_from(every) if present else st.sampled_from(every),
                       label="field")
        _assign(target, fd, data.draw(self.value_for(fd, rpc, 1), label=fd.name))

    def send(self, rpc: Rpc, request: Message) -> tuple[grpc.StatusCode, str]:
        assert self.agent.channel is not None
        stub = self.agent.channel.unary_unary(
            rpc.path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None)
        return _outcome(lambda: stub(request, timeout=CALL_TIMEOUT))

    def send_bytes(self, rpc: Rpc, payload: bytes) -> tuple[grpc.StatusCode, str]:
        assert self.agent.channel is not None
        stub = self.agent.channel.unary_unary(rpc.path)
        return _outcome(lambda: stub(payload, timeout=CALL_TIMEOUT))


def make_decoy() -> str:
    """A directory outside any agent's root, with a file, an empty directory and a tmpfs mount.

    Made before the agent starts, so that the agent's mount namespace holds a
    copy of the mount; the fuzzer aims paths and symlinks at all of it.
    """
    decoy = tempfile.mkdtemp(prefix="basalt-fuzz-decoy-", dir="/tmp")
    with open(os.path.join(decoy, "in-decoy"), "w") as handle:
        handle.write("keep")
    os.makedirs(os.path.join(decoy, "empty-dir"))
    os.makedirs(os.path.join(decoy, "mnt"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "basalt-fuzz-decoy", os.path.join(decoy, "mnt")],
                   check=True, capture_output=True, timeout=30)
    with open(os.path.join(decoy, "mnt", "inside"), "w") as handle:
        handle.write("keep")
    return decoy


def remove_decoy(decoy: str) -> None:
    mount_point = os.path.join(decoy, "mnt")
    if os.path.ismount(mount_point):
        subprocess.run(["umount", mount_point], check=False, capture_output=True, timeout=30)
    shutil.rmtree(decoy, ignore_errors=True)


def _without_paths(request: Message) -> Message:
    """A copy without its paths: a flipped byte in one would name a real place outside the test's root."""
    copy = type(request)()
    copy.CopyFrom(request)
    for fd in copy.DESCRIPTOR.fields:
        if fd.name.endswith("path"):
            copy.ClearField(fd.name)
    return copy


def _outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return SC.OK, ""


def mutated_bytes(seed: bytes) -> st.SearchStrategy[bytes]:
    """A valid request's bytes with a few bytes flipped, inserted or cut."""
    def apply(edits: list[tuple[int, int, int]]) -> bytes:
        out = bytearray(seed)
        for kind, position, value in edits:
            at = position % (len(out) + 1)
            if kind == 0 and out:
                out[min(at, len(out) - 1)] ^= value or 1
            elif kind == 1:
                out.insert(at, value)
            elif out:
                del out[min(at, len(out) - 1):]
        return bytes(out)

    return st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)),
                    min_size=1, max_size=4).map(apply)


def _build(cls: type, values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        if value is not None:
            _assign(message, message.DESCRIPTOR.fields_by_name[name], value)
    return message


def _assign(message: Message, fd: FieldDescriptor, value: Any) -> None:
    if value is None:
        message.ClearField(fd.name)
        return
    current = getattr(message, fd.name)
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        current.clear()
        current.update(value)
    elif fd.is_repeated:
        del current[:]
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                current.add().CopyFrom(item)
        else:
            current.extend(value)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        current.CopyFrom(value)
    else:
        setattr(message, fd.name, value)


def examples(default: int) -> int:
    """How many requests a run sends: *default* in CI, more with BASALT_FUZZ_EXAMPLES=N."""
    return int(os.environ.get(EXAMPLES_ENV) or default)


def run(world: World, count: int) -> None:
    """Send *count* generated, mutated and raw requests; every RPC must have been called."""
    from hypothesis import HealthCheck, Phase, given, settings

    methods = rpcs()
    larger = bool(os.environ.get(EXAMPLES_ENV))

    # Derandomized in CI (the same requests every run); a larger run explores new ones each time. No
    # shrinking: the agent's state carries over from one request to the next, so the first failure is
    # the one to report.
    @settings(max_examples=count, deadline=None, database=None, derandomize=not larger,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(st.data())
    def one_request(data: Any) -> None:
        world.exercise(data, methods)

    world.exercise_each(methods)
    one_request()
    print(f"\nfuzz: {sum(world.calls.values())} requests:",
          ", ".join(f"{k}={v}" for k, v in sorted(world.answers.items())))
    missing = sorted({m.name for m in methods} - set(world.calls))
    assert not missing, f"never called: {missing}"
    world.agent.identity.Probe(csi.ProbeRequest(), timeout=CALL_TIMEOUT)
    world.check_untouched("the run")
    log = world.agent.log()
    for sentinel in (SECRET_SENTINEL, FLAG_SENTINEL):
        assert sentinel not in log, f"{sentinel} (a secret or a mount flag) reached the agent's log"


def release_stacked_loops(agent: Agent) -> None:
    """Detach the loop devices stacked over the agent's own after it stopped (LV mappings, read-only views).

    The agent ran in another mount namespace, so ``losetup`` here shows a
    backing device node it opened as ``/loopN`` rather than ``/dev/loopN``;
    the shared clean-up, which looks for ``/dev/loopN``, would miss them.
    """
    known = set(loops_under(agent.root)) | ({agent.lvm.device} if agent.lvm and agent.lvm.device else set())
    stacked: list[str] = []
    grew = True
    while grew:
        grew = False
        names = known | {"/" + os.path.basename(d) for d in known}
        for loop in loop_table():
            if loop.device not in known and loop.back_file in names:
                known.add(loop.device)
                stacked.append(loop.device)
                grew = True
    for device in reversed(stacked):
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True, timeout=30)
