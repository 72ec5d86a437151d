"""bench/vm_bench.py's report (what the host prints from the guest's JSON reports) and the bench options it runs.

The reports here are made by the benches' own writers (benchlib.Row.to_json, command_profile.Profile.to_json),
so a change of their format breaks these tests rather than the VM run's summary.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import bench_iscsi  # noqa: E402 - found through the path set above
import bench_lvm_pool  # noqa: E402
import benchlib  # noqa: E402
import command_profile  # noqa: E402
import vm_bench  # noqa: E402


def samples(*ms: float) -> benchlib.Samples:
    return benchlib.Samples([m / 1000 for m in ms])


def profile(rpc: str, *tools: str) -> command_profile.Profile:
    found = command_profile.Profile(rpc, 0)
    found.add([command_profile.Command(tool, [tool], 0, 0.01) for tool in tools], 0.05)
    return found


def lvm_report() -> dict:
    rows = [benchlib.Row("1 create/delete 64 MiB", "CreateVolume", samples(300, 100, 200), "lvcreate -L 64m",
                         samples(50, 100, 150)),
            benchlib.Row("1 create/delete 64 MiB", "Create+Delete", samples(400), "lvcreate + lvremove",
                         samples(160))]
    profiles = [profile("CreateVolume", "lvcreate", "lvs", "lvs")]
    return {"rounds": 3, "facts": {"date_utc": "2026-12-05T03:00:00Z", "loadavg_at_start": 1.5, "kernel": "6.1.0"},
            "loadavg_at_end": 2.25, "results": [row.to_json() for row in rows],
            "commands_per_rpc": [p.to_json() for p in profiles]}


def lio_report() -> dict:
    rows = [benchlib.Row("iscsi export (lio)", "ControllerPublish", samples(90), "rtslib + save_to_file", samples(30))]
    return {"rounds": 1, "facts": {"date_utc": "2026-12-05T03:10:00Z", "loadavg_at_start": 0.5, "kernel": "6.1.0"},
            "loadavg_at_end": 0.75, "results": [row.to_json() for row in rows],
            "profiles": [profile("ControllerPublish").to_json()]}


def test_the_summary_gives_every_ratio_with_the_commands_of_its_rpc() -> None:
    table = vm_bench.summary({"lvm-dm": lvm_report(), "lio": lio_report()}).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:5]]
    assert cells == [
        ["lvm-dm", "CreateVolume", "200.0", "lvcreate -L 64m", "100.0", "2.00x", "lvcreate 1, lvs 2"],
        ["lvm-dm", "Create+Delete", "400.0", "lvcreate + lvremove", "160.0", "2.50x", "-"],
        ["lio", "ControllerPublish", "90.0", "rtslib + save_to_file", "30.0", "3.00x", "none"],
    ]
    assert table[0].split("|")[1].strip() == "bench" and set(table[1]) <= {"|", "-", ":"}
    assert "lvm-dm: 2026-12-05T03:00:00Z, 3 rounds, guest 1-minute load 1.50 -> 2.25, kernel 6.1.0" in table
    assert "lio: 2026-12-05T03:10:00Z, 1 rounds, guest 1-minute load 0.50 -> 0.75, kernel 6.1.0" in table


def test_a_reports_notes_follow_its_date_line() -> None:
    """bench_iscsi's LIO report carries the crash-safe bound as a note, written by bench_iscsi.bound_note."""
    bound = {"over_rtslib": {"ControllerPublish": 1.43, "ControllerUnpublish": 1.28},
             "grpc_over_rtslib": {"ControllerPublish": 1.27, "ControllerUnpublish": 1.12},
             "grpc_round_trip": samples(16.3).summary(), "durable_write": samples(8.6).summary()}
    report = dict(lio_report(), notes=[bench_iscsi.bound_note(bound)])
    table = vm_bench.summary({"lio": report}).splitlines()
    assert table[-2].startswith("lio: 2026-12-05T03:10:00Z")
    assert table[-1] == ("lio: the crash-safe bound against rtslib's calls alone: ControllerPublish 1.43x (rtslib + "
                         "gRPC + 1 durable write), ControllerUnpublish 1.28x (rtslib + gRPC + 2 durable writes); "
                         "without the durable writes (rtslib + gRPC): ControllerPublish 1.27x, ControllerUnpublish "
                         "1.12x; a bare gRPC round trip 16.3 ms, a durable write 8.6 ms")


def test_reports_are_read_in_the_order_asked_and_a_missing_one_is_left_out() -> None:
    files = {"lio.json": json.dumps(lio_report()), "lvm-dm.json": json.dumps(lvm_report()), "rc": "0\n"}
    reports = vm_bench.read_reports(files, ["lvm-dm", "lvmthin", "lio"])
    assert list(reports) == ["lvm-dm", "lio"]
    assert reports["lio"]["results"][0]["floor_name"] == "rtslib + save_to_file"


@pytest.mark.parametrize("name, options", [
    ("lvm-dm", ["bench_lvm_pool.py", "--activation", "dm", "--skip", "2"]),
    ("lvmthin", ["bench_lvm_pool.py", "--thin", "--skip", "2"]),
    ("lio", ["bench_iscsi.py", "--backend", "lio"]),
])
def test_each_bench_writes_its_report_to_the_results_share(name: str, options: list) -> None:
    argv = vm_bench.bench_argv(name, 4)
    assert argv[:len(options)] == options
    assert argv[len(options):] == ["--rounds", "4", "--json", f"/results/{name}.json", "--tmpdir", "/tmp"]


def test_bare_vg_gives_the_lvm_benches_a_vg_of_their_own_for_the_bare_side() -> None:
    assert vm_bench.bench_argv("lvm-dm", 4, bare_vg=True)[-1] == "--bare-vg"
    assert vm_bench.bench_argv("lvmthin", 4, bare_vg=True)[-1] == "--bare-vg"
    assert "--bare-vg" not in vm_bench.bench_argv("lio", 4, bare_vg=True)


def test_an_unknown_bench_is_refused() -> None:
    with pytest.raises(ValueError, match="no bench 'tgt'"):
        vm_bench.bench_argv("tgt", 1)
    with pytest.raises(SystemExit):
        vm_bench.main(["--only", "lvm-dm,tgt"])


def test_the_pool_kinds_floor_and_lvm_conf() -> None:
    dm, thin, loop = (bench_lvm_pool.PoolKind(n) for n in ("dm", "thin", "loop"))
    assert "activation = 0" in loop.lvm_conf(["/dev/loop7"]) and "monitoring" not in loop.lvm_conf(["/dev/loop7"])
    for kind in (dm, thin):
        conf = kind.lvm_conf(["/dev/loop7"])
        assert "global { activation = 1 }" in conf and "activation { monitoring = 0" in conf
        assert '"a|^/dev/loop7$|", "r|.*|"' in conf
    assert thin.create_args("vg", "lv", 64 << 20) == [
        "lvcreate", "--yes", "--type", "thin", "-n", "lv", "-V", "64m", "--thinpool", "thinpool", "vg"]
    assert dm.create_args("vg", "lv", 64 << 20) == ["lvcreate", "--yes", "-n", "lv", "-L", "64m", "vg"]
    assert "--alloc" in loop.create_args("vg", "lv", 64 << 20)
    assert thin.agent_pool_args("vg") == ["--pool", "lvmthin:vg/thinpool"]
    assert dm.agent_pool_args("vg") == ["--pool", "lvm:vg", "--lvm-activation", "dm"]


def test_thin_takes_no_loop_activation() -> None:
    with pytest.raises(SystemExit):
        bench_lvm_pool.main(["--thin", "--activation", "loop"])


def test_a_profiled_call_is_filed_once_the_tools_it_answered_before_their_exit_have_ended(
        tmp_path: Path) -> None:
    """The next measurement starts as quiet as a bare command's: the profiler waits (untimed) for the ``ended``
    line of each command the agent answered before its exit, and files the commands then."""
    log = tmp_path / "agent.log"
    log.write_text("")
    agent = command_profile.ProfiledAgent(benchlib.Workspace(str(tmp_path)), "a", str(tmp_path))
    agent.log_path = str(log)

    def line(message: str) -> None:
        with log.open("a") as handle:
            handle.write(json.dumps({"msg": message}) + "\n")
    ended_at: list = []

    def lingering() -> None:
        time.sleep(0.2)
        ended_at.append(time.monotonic())
        line("ended ['lvcreate', '--yes'] rc=0 in 0.250s")

    def rpc() -> None:
        line("ran ['lvs'] rc=0 in 0.010s")
        line("ran ['lvcreate', '--yes'] answered in 0.050s")
        threading.Thread(target=lingering).start()
    profiler = command_profile.Profiler(agent)
    took, _ = profiler.call("CreateVolume", 0, rpc)
    assert ended_at and time.monotonic() >= ended_at[0]
    assert took < 0.2  # the wait is not the RPC's time
    filed = profiler.profiles[("CreateVolume", 0)].samples[0]
    assert [(c.tool, c.answered) for c in filed] == [("lvs", False), ("lvcreate", True)]
