"""A servicer context for calling the agent's services directly: ``abort`` raises :class:`Aborted`, as grpc's
context ends the RPC with that code."""

from __future__ import annotations

import grpc


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)
