"""The one command runner: argv only, timeouts, LC_ALL=C, secrets hidden."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import List

import pytest

from basalt_core.errors import CommandFailed, InvalidRequest
from basalt_core.runner import Answer, operand, run, settle


def test_runs_argv_with_a_stable_locale() -> None:
    result = run(["env"], env={"LANG": "de_DE.UTF-8", "EXTRA": "1"})
    lines = result.stdout.splitlines()
    assert "LC_ALL=C" in lines and "EXTRA=1" in lines


def test_a_shell_string_is_refused() -> None:
    with pytest.raises(TypeError):
        run("echo hi")


def test_failure_names_the_object_and_carries_rc_and_stderr() -> None:
    with pytest.raises(CommandFailed) as caught:
        run(["sh", "-c", "echo broken >&2; exit 3"], what="attach vol-1")
    error = caught.value
    assert (error.rc, error.stderr) == (3, "broken")
    assert str(error) == "attach vol-1: sh failed (rc=3): broken"


def test_unchecked_failure_returns_the_result() -> None:
    assert run(["false"], check=False).rc == 1


def test_missing_tool_is_rc_127() -> None:
    with pytest.raises(CommandFailed) as caught:
        run(["basalt-no-such-tool"])
    assert caught.value.rc == 127


def test_timeout() -> None:
    with pytest.raises(CommandFailed, match=r"timed out after 0\.2s"):
        run(["sleep", "5"], timeout=0.2)


def test_timeout_of_a_tool_that_closed_its_output_but_runs_on() -> None:
    """The wait for the exit (on a pidfd) keeps the deadline, and the tool is killed."""
    started = time.monotonic()
    with pytest.raises(CommandFailed, match=r"timed out after 0\.3s"):
        run(["sh", "-c", "exec >&- 2>&-; exec sleep 5"], timeout=0.3)
    assert time.monotonic() - started < 3


def test_input_output_and_exit_status_as_subprocess_gives_them() -> None:
    result = run(["sh", "-c", "cat; printf 'a\\r\\nb' >&2; exit 4"], stdin="x\ny", check=False)
    assert (result.rc, result.stdout, result.stderr) == (4, "x\ny", "a\nb")  # text mode: newlines translated
    assert run(["sh", "-c", "kill -9 $$"], check=False).rc == -9


def test_each_stdout_line_is_handed_over_while_the_tool_still_runs(tmp_path: Path) -> None:
    """*on_line* gets each line as the tool writes it: here the tool goes on only once the caller has seen its
    first line; the result is what it would be without *on_line* (newlines translated, stderr kept)."""
    seen = tmp_path / "seen"
    lines: List[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        seen.touch()
    script = f"printf 'a\\r\\n'; printf oops >&2; i=0; while [ ! -e {seen} ] && [ $i -lt 500 ]; do " \
             f"sleep 0.01; i=$((i+1)); done; [ -e {seen} ] && printf 'b\\nc'; exit 4"
    result = run(["sh", "-c", script], check=False, on_line=on_line)
    assert (result.rc, result.stdout, result.stderr) == (4, "a\nb\nc", "oops")
    assert lines == ["a\n", "b\n"]  # (the last one, unfinished, only in the result)
    with pytest.raises(CommandFailed, match=r"timed out after 0\.3s"):
        run(["sh", "-c", "echo a; exec sleep 5"], timeout=0.3, on_line=lines.append)


def test_secrets_never_appear_in_errors() -> None:
    with pytest.raises(CommandFailed) as caught:
        run(["sh", "-c", "echo bad password hunter2 >&2; exit 1", "--password", "hunter2"], secrets=["hunter2"])
    assert "hunter2" not in str(caught.value) and "hunter2" not in " ".join(caught.value.argv)


@pytest.mark.parametrize("value", ["-f", "--all", "", "a\0b"])
def test_operands_that_look_like_options_are_refused(value: str) -> None:
    with pytest.raises(InvalidRequest):
        operand(value)


def test_plain_operands_pass() -> None:
    assert operand("/dev/loop0") == "/dev/loop0"


def alive(pid: int) -> bool:
    """Whether *pid* still runs (a zombie, exited but not reaped yet, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_caller_that_has_its_answer_gets_it_before_the_tool_exits(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """*answered*, set at the line that says the work is done: ``run`` returns there (rc 0, the output so
    far) while the tool still runs; its exit is awaited in the background, logged, and a failure after the
    answer is a warning (with secrets hidden); ``settle`` waits for it."""
    go_on = tmp_path / "go-on"
    answered = Answer()
    script = f"echo $$; echo done; echo hunter2 >&2; i=0; while [ ! -e {go_on} ] && [ $i -lt 1000 ]; do " \
             f"sleep 0.01; i=$((i+1)); done; echo late; exit 3"
    caplog.set_level(logging.DEBUG, logger="basalt_core.runner")
    result = run(["sh", "-c", script, "--password", "hunter2"], secrets=["hunter2"], answered=answered,
                 on_line=lambda line: answered.set() if line == "done\n" else None)
    pid = int(result.stdout.split()[0])
    assert (result.rc, result.stdout) == (0, f"{pid}\ndone\n")
    assert alive(pid), "run returned while the tool still ran"
    assert not settle(0.05)
    go_on.touch()
    assert settle(10)
    assert not alive(pid)
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("ran ['sh', '-c',") and " answered in " in m for m in messages)
    assert any(m.startswith("ended ['sh', '-c',") and " rc=3 in " in m for m in messages)
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "rc=3 after its work was done" in warning.getMessage() and "hunter2" not in warning.getMessage()


def test_an_answer_given_from_another_thread_ends_the_wait(tmp_path: Path) -> None:
    go_on = tmp_path / "go-on"
    answered = Answer()
    threading.Timer(0.1, answered.set).start()
    script = f"echo $$; i=0; while [ ! -e {go_on} ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done"
    result = run(["sh", "-c", script], answered=answered)
    pid = int(result.stdout.split()[0])
    assert result.rc == 0 and alive(pid)
    go_on.touch()
    assert settle(10) and not alive(pid)


def test_without_the_answer_the_result_is_the_exit(tmp_path: Path) -> None:
    result = run(["sh", "-c", "echo done; echo oops >&2; exit 4"], check=False, answered=Answer())
    assert (result.rc, result.stdout, result.stderr) == (4, "done\n", "oops\n")
    with pytest.raises(CommandFailed, match=r"timed out after 0\.3s"):
        run(["sh", "-c", "exec sleep 5"], timeout=0.3, answered=Answer())


def test_a_tool_answered_for_keeps_its_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """After the answer the deadline still holds: the tool is killed then, and that is a warning."""
    answered = Answer()
    result = run(["sh", "-c", "echo $$; exec sleep 30"], timeout=0.5, answered=answered,
                 on_line=lambda line: answered.set())
    pid = int(result.stdout)
    assert result.rc == 0 and alive(pid)
    assert settle(10) and not alive(pid)
    assert any("rc=-9 after its work was done" in record.getMessage() for record in caplog.records)


def test_an_answer_said_after_it_is_closed_does_nothing() -> None:
    """A lock released after its tool's run returned (the tool ended first) says an answer nobody reads."""
    answer = Answer()
    answer.close()
    answer.set()  # (its pipe is closed: nothing written anywhere)
    assert answer.is_set()


def test_ended_is_called_once_at_the_tools_exit_however_run_returns(tmp_path: Path) -> None:
    """*ended*: at the exit, reaped (a lock whose end is the tool's goes then): from the background when the
    caller had its answer before; before ``run`` returns or raises otherwise; also for a tool that never ran."""
    exits: List[str] = []

    def ended(name: str) -> None:
        exits.append(name)
    go_on = tmp_path / "go-on"
    answered = Answer()
    result = run(["sh", "-c", f"echo $$; echo done; while [ ! -e {go_on} ]; do sleep 0.01; done"],
                 answered=answered, on_line=lambda line: answered.set() if line == "done\n" else None,
                 ended=lambda: ended("answered"), timeout=30)
    pid = int(result.stdout.split()[0])
    time.sleep(0.05)
    assert exits == [] and alive(pid)
    go_on.touch()
    assert settle(10)
    assert exits == ["answered"] and not alive(pid)
    run(["true"], answered=Answer(), ended=lambda: ended("exit"))
    with pytest.raises(CommandFailed):
        run(["sh", "-c", "exit 2"], ended=lambda: ended("failed"))
    with pytest.raises(CommandFailed):
        run(["sh", "-c", "exec sleep 5"], timeout=0.3, answered=Answer(), ended=lambda: ended("killed"))
    with pytest.raises(CommandFailed):
        run(["/nonexistent/tool"], ended=lambda: ended("missing"))
    assert exits == ["answered", "exit", "failed", "killed", "missing"]
