"""Run ``basalt-agent`` as a child process: start it, wait until its socket answers Probe, stop it.

The one way the tests, the benchmarks and the demo run an agent, so that all of
them start, wait and stop it alike (SIGTERM, then SIGKILL if it hangs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import grpc

from .proto import csi_pb2, csi_pb2_grpc


class AgentFailed(RuntimeError):
    """The agent exited during start-up or never answered Probe; the message ends with its log."""


class AgentProcess:
    """``python3 -m basalt_agent --endpoint unix://SOCKET ARGS...``, its output appended to *log_path*."""

    def __init__(self, socket_path: str, args: Sequence[str] = (), *, log_path: str,
                 env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> None:
        self.socket_path = socket_path
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.started_at = 0.0

    @property
    def argv(self) -> List[str]:
        return [sys.executable, "-m", "basalt_agent", "--endpoint", f"unix://{self.socket_path}", *self.args]

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise AgentFailed(f"the agent on {self.socket_path} is already running")
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=self.env, cwd=self.cwd)

    def wait_ready(self, timeout: float = 30.0, poll: float = 0.01) -> float:
        """Wait for a Probe that answers ready; return the seconds since start (AgentFailed otherwise)."""
        if self.proc is None:
            raise AgentFailed("the agent was not started")
        deadline = self.started_at + timeout
        last = "its socket never appeared"
        with grpc.insecure_channel(f"unix://{self.socket_path}") as channel:
            identity = csi_pb2_grpc.IdentityStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AgentFailed(f"the agent exited with {self.proc.returncode} during start-up; its log:\n"
                                      f"{self.log_tail()}")
                if os.path.exists(self.socket_path):
                    try:
                        answer = identity.Probe(csi_pb2.ProbeRequest(), timeout=2)
                        if not answer.HasField("ready") or answer.ready.value:
                            return time.monotonic() - self.started_at
                        last = "Probe answered ready=false"
                    except grpc.RpcError as error:
                        last = f"Probe: {error.code().name} {error.details()}"
                time.sleep(poll)
        raise AgentFailed(f"the agent did not answer Probe within {timeout} s ({last}); its log:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """SIGTERM (it finishes in-flight calls and removes its socket), SIGKILL if it hangs; its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def log_tail(self, chars: int = 4000) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()[-chars:]
        except OSError:
            return ""
