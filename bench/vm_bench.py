#!/usr/bin/env python3
"""Run the benchmarks that need a real kernel (device-mapper, thin pools, LIO) in one VM of the VM tier.

    python3 bench/vm_bench.py [--rounds N] [--only lvm-dm,lvmthin,lio] [--bare-vg] [--json-dir DIR] [--timeout S]

On the host (root) it boots
the VM tier's image once (tests/vm/run_vm.py: Debian under QEMU TCG, the tree
read-only at /basalt, the agent's wheels over 9p as the conformance subset gets
them) with one scratch disk for the guest's /tmp, and runs this file with
``--guest`` inside. The guest runs, one after another and each in its own
workspace:

* ``lvm-dm``: bench_lvm_pool.py ``--activation dm --skip 2`` (CreateVolume /
  DeleteVolume against bare ``lvcreate -L`` / ``lvremove``, and the node stage
  cycle against ``lvchange -ay`` + mkfs + mount ...);
* ``lvmthin``: bench_lvm_pool.py ``--thin --skip 2`` (against a bare thin
  ``lvcreate -V`` / ``lvremove``);
* ``lio``: bench_iscsi.py ``--backend lio`` (ControllerPublish /
  ControllerUnpublish against the same LIO objects made with rtslib-fb's own
  calls).

``--bare-vg``: lvm-dm and lvmthin make the bare side's LVs in an equal VG of its own (bench_lvm_pool.py
``--bare-vg``), so that the agent is its VG's only writer and its LV index stays valid between its RPCs.

Each bench prints its tables on the console and writes its JSON report to the
results share; the host then prints one table of every ratio with the external
commands the agent ran per RPC (``summary``). Absolute times under TCG are many
times a real host's: read the ratios, whose floor runs in the same guest.
Exit status: 0 when every bench ran; the VM's failure otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
GUEST_RESULTS = "/results"
# Agent start-up under TCG: imports from a read-only tree without bytecode take tens of seconds.
GUEST_START_TIMEOUT = 300.0
DEFAULT_ROUNDS = 10
DEFAULT_TIMEOUT = 3600.0
SCRATCH_MIB = 16384  # sparse: the guest's /tmp, which holds the benches' PV images
BENCHES = ("lvm-dm", "lvmthin", "lio")


def bench_argv(name: str, rounds: int, bare_vg: bool = False, backups: bool = False) -> List[str]:
    """The bench script and its arguments for one of :data:`BENCHES` (the JSON report goes to the results)."""
    common = ["--rounds", str(rounds), "--json", f"{GUEST_RESULTS}/{name}.json", "--tmpdir", "/tmp"]
    lvm = [*common, *(["--backups"] if backups else []), *(["--bare-vg"] if bare_vg else [])]
    if name == "lvm-dm":
        return ["bench_lvm_pool.py", "--activation", "dm", "--skip", "2", *lvm]
    if name == "lvmthin":
        return ["bench_lvm_pool.py", "--thin", "--skip", "2", *lvm]
    if name == "lio":
        return ["bench_iscsi.py", "--backend", "lio", *common]
    raise ValueError(f"no bench {name!r}: one of {', '.join(BENCHES)}")


# -- the report -----------------------------------------------------------------------

def command_counts(report: Dict[str, Any]) -> Dict[str, str]:
    """RPC name -> the external commands of its median sample ("lvcreate 1, lvs 1"; "none" when it ran none),
    from a report's command profiles (bench_lvm_pool: ``commands_per_rpc``, bench_iscsi: ``profiles``)."""
    found: Dict[str, str] = {}
    for profile in report.get("commands_per_rpc", report.get("profiles", [])):
        counts = profile.get("counts", {})
        found[profile["rpc"]] = ", ".join(f"{tool} {n}" for tool, n in sorted(counts.items())) or "none"
    return found


def summary(reports: Dict[str, Dict[str, Any]]) -> str:
    """One markdown table of every ratio of *reports* (bench name -> its JSON report), with the commands per
    RPC, then each bench's date, 1-minute load (the guest's) and kernel."""
    header = ["bench", "operation", "basalt ms", "floor", "floor ms", "ratio", "agent's commands"]
    lines: List[List[str]] = []
    notes: List[str] = []
    for name, report in reports.items():
        commands = command_counts(report)
        for row in report.get("results", []):
            lines.append([name, row["operation"], f"{row['basalt']['median_ms']:.1f}", row["floor_name"],
                          f"{row['floor']['median_ms']:.1f}", f"{row['ratio']:.2f}x",
                          commands.get(row["operation"], "-")])
        facts = report.get("facts", {})
        load = (facts.get("loadavg_at_start", float("nan")), report.get("loadavg_at_end", float("nan")))
        notes.append(f"{name}: {facts.get('date_utc', '?')}, {report.get('rounds', '?')} rounds, guest 1-minute load "
                     f"{load[0]:.2f} -> {load[1]:.2f}, kernel {facts.get('kernel', '?')}")
        notes += [f"{name}: {note}" for note in report.get("notes", [])]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    right = {2, 4, 5}

    def fmt(cells: List[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(header), rule, *[fmt(line) for line in lines], "", *notes])


def read_reports(files: Dict[str, str], names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """The JSON reports among the guest's result files (``NAME.json``), in the order of *names*."""
    return {name: json.loads(files[f"{name}.json"]) for name in names if f"{name}.json" in files}


# -- inside the VM ----------------------------------------------------------------------

def guest(names: Sequence[str], rounds: int, bare_vg: bool, backups: bool) -> int:
    """Prepare the guest as the VM tier's agent checks do, then run each bench in this process."""
    sys.path.insert(0, str(REPO / "tests" / "vm" / "guest"))
    import agent_iscsi_lib as lib  # guest-side: the wheels share, LVM without event activation, an ext4 /tmp

    lib.prepare(lib.disk_by_serial("scratch0"))
    import basalt_core  # through prepare's shim: the agents this process starts need the same on PYTHONPATH

    shim = os.path.dirname(os.path.dirname(basalt_core.__file__ or ""))
    os.environ["PYTHONPATH"] = os.pathsep.join([shim, lib.DEPS])
    sys.path.insert(0, str(BENCH))
    import benchlib

    benchlib.START_TIMEOUT = GUEST_START_TIMEOUT
    failed = []
    for name in names:
        script, *argv = bench_argv(name, rounds, bare_vg, backups)
        print(f"=== vm_bench: {name}: {script} {' '.join(argv)}", flush=True)
        module = __import__(script.removesuffix(".py"))
        started = time.monotonic()
        status = module.main(argv)
        print(f"=== vm_bench: {name} exited {status} after {time.monotonic() - started:.0f} s", flush=True)
        if status != 0:
            failed.append(name)
    lib.release_tmp()
    if failed:
        print(f"vm_bench: failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


# -- on the host -------------------------------------------------------------------------

def host(names: Sequence[str], rounds: int, timeout: float, json_dir: Optional[Path], bare_vg: bool,
         backups: bool) -> int:
    sys.path.insert(0, str(REPO / "tests" / "vm"))
    import build_image
    import pydeps
    import run_vm

    build_image.ensure_host_tools()
    image, _built = build_image.get_image()
    deps = pydeps.ensure()
    load_start = os.getloadavg()[0]
    command = ["python3", "bench/vm_bench.py", "--guest", "--rounds", str(rounds), "--only", ",".join(names),
               *(["--bare-vg"] if bare_vg else []), *(["--backups"] if backups else [])]
    result = run_vm.run_vm(command, timeout=timeout, disks=1, disk_size_mib=SCRATCH_MIB, image=image,
                           extra_shares={pydeps.MOUNT_TAG: deps})
    load_end = os.getloadavg()[0]
    reports = read_reports(result.files, names)
    if json_dir is not None:
        json_dir.mkdir(parents=True, exist_ok=True)
        for name, report in reports.items():
            (json_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"vm_bench: {result.message}; host 1-minute load {load_start:.2f} -> {load_end:.2f} "
          f"({os.cpu_count()} cores; the guest is QEMU TCG)")
    if reports:
        print(summary(reports))
    missing = [name for name in names if name not in reports]
    if missing:
        print(f"vm_bench: no report from {', '.join(missing)}", file=sys.stderr)
    return result.rc if result.rc != 0 else (1 if missing else 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"rounds of each bench (default {DEFAULT_ROUNDS})")
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma list of the benches to run (default {','.join(BENCHES)})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds for the VM's boot, the benches and power-off (default {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--json-dir", type=Path, help="also copy each bench's JSON report here (NAME.json)")
    parser.add_argument("--bare-vg", action="store_true",
                        help="lvm-dm, lvmthin: the bare side's LVs in a VG of their own (the agent its VG's only "
                        "writer, as where only Basalt changes the pool's VG)")
    parser.add_argument("--backups", action="store_true",
                        help="lvm-dm, lvmthin: LVM writes the VG's metadata backup after each change, as LVM's default "
                        "configuration does (both sides; bench_lvm_pool.py --backups)")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)  # inside the VM only
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown or not names:
        parser.error(f"--only takes {', '.join(BENCHES)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.guest:
        return guest(names, args.rounds, args.bare_vg, args.backups)
    if os.geteuid() != 0:
        print("vm_bench: needs root (QEMU's image cache, the wheels)", file=sys.stderr)
        return 2
    return host(names, args.rounds, args.timeout, args.json_dir, args.bare_vg, args.backups)


if __name__ == "__main__":
    sys.exit(main())
