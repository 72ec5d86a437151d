"""The VM tier: storage paths proven on a real Linux kernel under QEMU (TCG).

The machines this project runs on have no device-mapper, LIO or kernel iSCSI
initiator, so these tests boot Debian's stock kernel in QEMU (image built from
Debian's packages by build_image.py, cached in /var/cache/basalt-vm) and run
the checks of tests/vm/guest/ inside it.  The verdict of every run comes from
the result file the guest writes, never from QEMU's exit status.

The runner's own behaviour on timeouts and missing verdicts is also tested
with a fake QEMU, which needs no image.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import build_image
import pydeps
import pytest
import run_vm
import vm_testlib
from vm_testlib import check_lines as _check_lines
from vm_testlib import fake_image as _fake_image
from vm_testlib import fake_qemu as _fake_qemu
from vm_testlib import gone
from vm_testlib import tail as _tail

pytestmark = pytest.mark.vm

REAL_CHECKS = ["lvm_linear", "lvm_thin", "lvm_cow", "iscsi_lio"]
RUN_CHECKS = "tests/vm/guest/run_checks.sh"


def test_real_kernel_storage_checks(image: build_image.Image) -> None:
    """LVM linear/thin/COW snapshot and LIO + open-iscsi, in one boot."""
    result = run_vm.run_vm(["sh", RUN_CHECKS, *REAL_CHECKS], timeout=600, disks=5, image=image, echo=None)
    print(result.console)
    verdicts = _check_lines(result)
    assert result.verdict, f"{result.message}\n{_tail(result.console)}"
    for check in REAL_CHECKS:
        assert verdicts.get(check) == "PASS", f"check {check}: {verdicts.get(check)}\n{_tail(result.console)}"
    assert result.rc == 0, result.message


CONFORMANCE_CHECKS = ["conformance_lvm_dm", "conformance_lvmthin"]
# Expected JUnit outcome of tests/conformance/test_realkernel.py per kind: every
# test passes, except the COW snapshot on lvmthin (thick pools only), which skips.
# (device-mapper without LVM backups answers CreateVolume and DeleteVolume at each tool's exit: the kill tests of
# the answers given before the exit are loop activation's)
CONFORMANCE_SKIPS = {
    "conformance_lvm_dm": {"test_killed_after_a_thin_createvolume_answered_before_lvcreates_exit"},
    "conformance_lvmthin": {"test_cow_snapshot", "test_killed_around_the_one_lvcreate_of_a_blank_volume[before]",
                            "test_killed_around_the_one_lvcreate_of_a_blank_volume[after]",
                            "test_killed_around_the_one_lvcreate_of_a_blank_volume[answered]"},
}


def test_conformance_real_kernel_subset(image: build_image.Image) -> None:
    """tests/conformance/test_realkernel.py inside the VM with the real agent,
    --pool-kind lvm-dm then lvmthin, in one boot (grpcio/protobuf/pytest from
    the host's wheel cache, pydeps.py, shared read-only over 9p)."""
    deps = pydeps.ensure()
    result = run_vm.run_vm(
        ["env", "BASALT_CHECK_TIMEOUT=600", "sh", RUN_CHECKS, *CONFORMANCE_CHECKS],
        timeout=1200, disks=len(CONFORMANCE_CHECKS), disk_size_mib=8192, image=image, echo=None,
        extra_shares={pydeps.MOUNT_TAG: deps},
    )
    print(result.console)
    assert result.verdict, f"{result.message}\n{_tail(result.console)}"
    verdicts = _check_lines(result)
    for check in CONFORMANCE_CHECKS:
        kind = check.removeprefix("conformance_").replace("_", "-")
        outcomes = vm_testlib.junit_outcomes(result.files.get(f"conformance-{kind}.xml", "<testsuites/>"))
        assert outcomes, f"{check}: no JUnit report\n{_tail(result.console)}"
        bad = {
            name: outcome for name, outcome in outcomes.items()
            if outcome != ("skipped" if name in CONFORMANCE_SKIPS[check] else "passed")
        }
        assert not bad, f"{check}: {bad}\n{_tail(result.console, 200)}"
        assert verdicts.get(check) == "PASS", f"check {check}: {verdicts.get(check)}"
    assert result.rc == 0, result.message


def test_self_test_failing_check_fails_the_run(image: build_image.Image) -> None:
    """A check that fails inside the VM makes the run fail on the host."""
    result = run_vm.run_vm(["sh", RUN_CHECKS, "fail"], timeout=300, image=image, echo=None)
    assert result.verdict, f"{result.message}\n{_tail(result.console)}"
    assert _check_lines(result) == {"fail": "FAIL"}
    assert result.rc != 0
    assert "check_fail: failing on purpose" in result.console


def test_guest_dying_without_verdict_is_a_failure(image: build_image.Image) -> None:
    """The guest powers off before writing rc: QEMU exits 0, the run fails."""
    result = run_vm.run_vm(
        ["sh", "-c", "sync; echo o > /proc/sysrq-trigger; sleep 60"], timeout=300, image=image, echo=None
    )
    assert not result.verdict
    assert not result.timed_out
    assert result.rc == run_vm.RC_NO_VERDICT, result.message


def test_two_hosts_iscsi_over_a_private_network(image: build_image.Image) -> None:
    """Storage host and node VMs on a QEMU stream socket network: IQN B is
    refused, IQN A logs in, data crosses both ways, A logs out."""
    two_host = "tests/vm/guest/check_two_host.py"
    storage, node = run_vm.run_pair(
        ["python3", two_host, "storage", "/dev/vdb"], ["python3", two_host, "node"], timeout=480, image=image, echo=None
    )
    print(storage.console)
    print(node.console)
    assert _check_lines(node) == {"two_host_node": "PASS"}, f"{node.message}\n{_tail(node.console)}"
    assert _check_lines(storage) == {"two_host_storage": "PASS"}, f"{storage.message}\n{_tail(storage.console)}"
    assert (storage.rc, node.rc) == (0, 0)


# --- the runner itself, with a fake QEMU (no image, no VM) -------------------


def test_runner_reads_the_verdict_file(tmp_path: Path) -> None:
    qemu = _fake_qemu(tmp_path, 'cat "$RESULTS/request.sh"; echo 7 > "$RESULTS/rc"\n')
    result = run_vm.run_vm(["echo", "a b"], timeout=30, image=_fake_image(tmp_path), qemu=qemu, echo=None)
    assert (result.rc, result.verdict, result.timed_out) == (7, True, False)
    assert "exec echo 'a b'" in result.console
    assert not Path((tmp_path / "tmpdir").read_text().strip()).exists()


def test_runner_missing_verdict_is_a_failure(tmp_path: Path) -> None:
    qemu = _fake_qemu(tmp_path, "exit 0\n")
    result = run_vm.run_vm(["true"], timeout=30, image=_fake_image(tmp_path), qemu=qemu, echo=None)
    assert (result.rc, result.verdict) == (run_vm.RC_NO_VERDICT, False)
    assert "without a verdict" in result.message


def _oopsing_qemu(tmp_path: Path, oopses: int, setup: str = "", this_vm: str = "true") -> str:
    """A fake QEMU whose first `oopses` boots print a guest kernel oops and fail where the shell test
    `this_vm` holds (after `setup`); every other boot passes. Each boot adds a line to tmp_path/boots."""
    return _fake_qemu(
        tmp_path,
        f"echo boot >> {tmp_path}/boots\n"
        + setup
        + f'if {this_vm} && [ "$(wc -l < {tmp_path}/boots)" -le {oopses} ]; then\n'
        "  echo '[   51.558052] BUG: kernel NULL pointer dereference, address: 0000000000000018'\n"
        "  echo '[   51.558052] RIP: 0010:iscsi_sw_tcp_release_conn+0x67/0x160 [iscsi_tcp]'\n"
        '  echo 1 > "$RESULTS/rc"\n'
        "else\n"
        '  echo 0 > "$RESULTS/rc"\n'
        "fi\n",
    )


def _boots(tmp_path: Path) -> int:
    return len((tmp_path / "boots").read_text().splitlines())


def test_runner_boots_once_more_after_a_guest_kernel_oops(tmp_path: Path) -> None:
    qemu = _oopsing_qemu(tmp_path, oopses=1)
    with pytest.warns(run_vm.GuestKernelOops, match="NULL pointer dereference"):
        result = run_vm.run_vm(["true"], timeout=30, image=_fake_image(tmp_path), qemu=qemu, echo=None)
    assert (result.rc, result.passed, _boots(tmp_path)) == (0, True, 2)
    assert result.replaced_oops == "BUG: kernel NULL pointer dereference, address: 0000000000000018"
    assert "fresh boot" in result.message and "BUG: kernel NULL pointer" not in result.console


def test_runner_reports_a_second_oops_after_one_retry(tmp_path: Path) -> None:
    qemu = _oopsing_qemu(tmp_path, oopses=5)
    with pytest.warns(run_vm.GuestKernelOops):
        result = run_vm.run_vm(["true"], timeout=30, image=_fake_image(tmp_path), qemu=qemu, echo=None)
    assert (result.rc, result.passed, _boots(tmp_path)) == (1, False, 2)
    assert run_vm.kernel_oops(result.console).startswith("BUG: kernel NULL pointer")


@pytest.mark.parametrize(
    "console",
    [
        "",  # a plain failure
        "BUG: kernel NULL pointer dereference\n",  # a program's output, not the kernel's (no timestamp)
        "[   12.000001] WARNING: CPU: 0 PID: 1 at fs/x.c:1 f+0x1/0x2\n",  # a kernel warning is no oops
    ],
)
def test_runner_does_not_boot_again_for_other_failures(tmp_path: Path, console: str) -> None:
    (tmp_path / "console").write_text(console)
    qemu = _fake_qemu(tmp_path, f'echo boot >> {tmp_path}/boots\ncat {tmp_path}/console\necho 1 > "$RESULTS/rc"\n')
    result = run_vm.run_vm(["true"], timeout=30, image=_fake_image(tmp_path), qemu=qemu, echo=None)
    assert (result.rc, result.replaced_oops, _boots(tmp_path)) == (1, "", 1)


def test_runner_does_not_boot_again_after_a_pass_with_an_oops(tmp_path: Path) -> None:
    qemu = _fake_qemu(
        tmp_path,
        f"echo boot >> {tmp_path}/boots\necho '[    3.100000] Oops: 0000 [#1] PREEMPT SMP NOPTI'\n"
        'echo 0 > "$RESULTS/rc"\n',
    )
    result = run_vm.run_vm(["true"], timeout=30, image=_fake_image(tmp_path), qemu=qemu, echo=None)
    assert (result.rc, result.replaced_oops, _boots(tmp_path)) == (0, "", 1)


def test_a_pair_boots_both_again_after_an_oops_in_either(tmp_path: Path) -> None:
    """The client's kernel oopses in the first pair; both VMs boot again (the fake server opens the
    pair's socket as QEMU's stream netdev would)."""
    qemu = _oopsing_qemu(
        tmp_path,
        oopses=2,  # the first pair's server and client: only the client (no socket of its own) oopses
        setup='sock=$(printf "%s\\n" "$@" | sed -n "s/.*server=on,addr.type=unix,addr.path=\\([^,]*\\),.*/\\1/p")\n'
        '[ -n "$sock" ] && python3 -c "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" "$sock"\n',
        this_vm='[ -z "$sock" ]',
    )
    with pytest.warns(run_vm.GuestKernelOops):
        server, client = run_vm.run_pair(
            ["true"], ["true"], timeout=30, image=_fake_image(tmp_path), qemu=qemu, echo=None
        )
    assert (server.passed, client.passed, _boots(tmp_path)) == (True, True, 4)
    assert server.replaced_oops == client.replaced_oops != ""


def test_runner_kills_everything_on_timeout(tmp_path: Path) -> None:
    qemu = _fake_qemu(tmp_path, f"sleep 1000 &\necho $! > {tmp_path}/child\nwait\n")
    t0 = time.monotonic()
    result = run_vm.run_vm(["true"], timeout=2, image=_fake_image(tmp_path), qemu=qemu, echo=None)
    assert time.monotonic() - t0 < 30
    assert (result.rc, result.timed_out) == (run_vm.RC_TIMEOUT, True)
    assert "timed out" in result.message
    child = int((tmp_path / "child").read_text())
    assert gone(child), f"fake QEMU's child {child} outlived the run"
    assert not Path((tmp_path / "tmpdir").read_text().strip()).exists()


def test_a_terminated_run_stops_its_guest(tmp_path: Path) -> None:
    """SIGTERM to the run's process group (how scripts/test.sh stops the VM streams) leaves no guest behind,
    although the guest runs in a session of its own."""
    qemu = _fake_qemu(tmp_path, f"sleep 1000 &\necho $! > {tmp_path}/child\nwait\n")
    script = (
        "import sys, pathlib; sys.path.insert(0, sys.argv[1]); import run_vm, vm_testlib\n"
        "run_vm.end_on_sigterm()\n"
        "tmp = pathlib.Path(sys.argv[2])\n"
        "run_vm.run_vm(['true'], timeout=600, image=vm_testlib.fake_image(tmp), qemu=sys.argv[3], echo=None)\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", script, str(Path(__file__).parent), str(tmp_path), qemu], start_new_session=True
    )
    child_file = tmp_path / "child"
    deadline = time.monotonic() + 60
    while not child_file.exists() or not child_file.read_text().strip():
        assert time.monotonic() < deadline and run.poll() is None, "the fake guest never started"
        time.sleep(0.1)
    child = int(child_file.read_text())
    os.killpg(run.pid, signal.SIGTERM)
    assert run.wait(timeout=60) != 0
    assert gone(child), f"the fake guest's child {child} outlived the terminated run"
    assert not Path((tmp_path / "tmpdir").read_text().strip()).exists()


# --- what the tier is given ----------------------------------------------------


@pytest.mark.parametrize("required, outcome", [(False, pytest.skip.Exception), (True, pytest.fail.Exception)])
def test_an_unavailable_tier_skips_unless_required(
    monkeypatch: pytest.MonkeyPatch, required: bool, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(vm_testlib, "REQUIRED", required)
    with pytest.raises(outcome, match="no QEMU here"):
        vm_testlib.unavailable("no QEMU here")


def test_wheel_sets_carry_bytecode_when_the_host_can_compile_it() -> None:
    """Under TCG the guest would otherwise compile grpc, protobuf and pytest in every process."""
    if not pydeps.PRECOMPILE:
        pytest.skip(f"the host's Python is not {pydeps.GUEST_PYTHON}: its bytecode would not fit the guest")
    deps = pydeps.ensure()
    sources = {p.with_suffix("") for p in deps.rglob("*.py")}
    compiled = {p.parent.parent / p.name.split(".")[0] for p in deps.rglob("__pycache__/*.pyc")}
    assert sources and sources <= compiled, sorted(sources - compiled)[:5]


def _import_from_zip(archive: Path, cache: Path, compile_allowed: bool) -> subprocess.CompletedProcess[str]:
    """A fresh Python with the images' zip bytecode hook imports ``payload.mod`` from `archive`."""
    hook_dir = build_image.IMAGE_FILES
    script = f"""
import sys
sys.dont_write_bytecode = True
sys.path.insert(0, {str(hook_dir)!r})
import basalt_zip_bytecode as hook
hook.CACHE_DIR = {str(cache)!r}
if not {compile_allowed}:
    def refuse(pathname, source):
        raise AssertionError("compiled " + pathname)
    hook._compile_source = refuse
sys.path.insert(0, {str(archive)!r})
import payload.mod
print(payload.mod.VALUE)
payload.mod.fail()
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)


def _payload(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("payload/__init__.py", "")
        z.writestr("payload/mod.py", f"VALUE = {value}\n\ndef fail():\n    raise RuntimeError('from the payload')\n")
    return path


def test_the_images_cache_bytecode_of_zip_imports(tmp_path: Path) -> None:
    """Ansible's payloads hold no bytecode: the hook compiles each source once per boot. A second import
    of the same source, from another archive, compiles nothing, and its tracebacks name that archive; a
    changed source is compiled anew, never served from the cache."""
    cache = tmp_path / "cache"
    first = _payload(tmp_path / "run1" / "ansible_stat_payload.zip", 1)
    ran = _import_from_zip(first, cache, compile_allowed=True)
    assert ran.stdout == "1\n" and f'File "{first}/payload/mod.py", line 4' in ran.stderr, ran.stderr
    assert len(list(cache.iterdir())) == 2  # payload/__init__.py and payload/mod.py

    again = _payload(tmp_path / "run2" / "ansible_stat_payload.zip", 1)
    ran = _import_from_zip(again, cache, compile_allowed=False)
    assert ran.stdout == "1\n" and "RuntimeError: from the payload" in ran.stderr, ran.stderr
    assert f'File "{again}/payload/mod.py", line 4' in ran.stderr and str(first) not in ran.stderr

    changed = _payload(tmp_path / "run3" / "ansible_stat_payload.zip", 2)
    ran = _import_from_zip(changed, cache, compile_allowed=False)
    assert f"AssertionError: compiled {changed}/payload/mod.py" in ran.stderr, ran.stderr
    ran = _import_from_zip(changed, cache, compile_allowed=True)
    assert ran.stdout == "2\n", ran.stderr
