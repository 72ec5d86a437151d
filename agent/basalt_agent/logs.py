"""Structured logs: one JSON line per event, one line per RPC, secrets never written.

Fields marked ``csi_secret`` in the CSI proto are dropped (recursively) from
anything logged, mount flags are withheld too (the spec says they may be
sensitive), and so are volume_context values other than the few known to be
harmless.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Dict

import grpc
from google.protobuf.message import Message

from .observing import ObservingInterceptor
from .proto import csi_pb2
from .validation import K8S_PREFIX

log = logging.getLogger("basalt.rpc")

# Request fields that identify what an RPC is about; safe to log.
_ID_FIELDS = (
    "name", "volume_id", "snapshot_id", "source_volume_id", "node_id",
    "staging_target_path", "target_path", "volume_path",
)
_WITHHELD = {"mount_flags"}
# volume_context may carry anything (an inline volume's attributes come from the pod spec, kubelet adds
# service account tokens): only values of keys known to hold no secret are logged.
_SHOWN_CONTEXT = {K8S_PREFIX + key for key in ("ephemeral", "pod.name", "pod.namespace", "pod.uid",
                                               "serviceAccount.name")} | {"size"}
_SHOWN_PREFIX = "basalt.dev/"
WITHHELD_VALUE = "(withheld)"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: Dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def redacted(message: Message) -> Message:
    """A copy of *message* without any csi_secret field (at any depth) or mount flags."""
    copy = type(message)()
    copy.CopyFrom(message)
    _strip(copy)
    return copy


def _strip(message: Message) -> None:
    for field, value in list(message.ListFields()):
        if field.GetOptions().Extensions[csi_pb2.csi_secret] or field.name in _WITHHELD:
            message.ClearField(field.name)
        elif field.name == "volume_context":
            for key in value:
                if key not in _SHOWN_CONTEXT and not key.startswith(_SHOWN_PREFIX):
                    value[key] = WITHHELD_VALUE
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                continue
            for item in (value if field.is_repeated else [value]):
                _strip(item)


def request_fields(request: Message) -> Dict[str, Any]:
    fields: Dict[str, Any] = {}
    if not isinstance(request, Message):  # bytes that did not decode (server.Undecodable)
        return fields
    for name in _ID_FIELDS:
        if name in request.DESCRIPTOR.fields_by_name:
            value = getattr(request, name)
            if value:
                fields[name] = value
    return fields


class RpcLogInterceptor(ObservingInterceptor):
    """Logs every unary RPC: method, ids, duration and status code."""

    def observe(self, method: str, request: Message, context: grpc.ServicerContext, code: grpc.StatusCode,
                seconds: float) -> None:
        fields: Dict[str, Any] = {"method": method, "code": code.name, "duration_ms": round(seconds * 1000, 2)}
        fields.update(request_fields(request))
        if code is not grpc.StatusCode.OK:
            details = context.details()
            fields["error"] = details.decode(errors="replace") if isinstance(details, bytes) else details
        if log.isEnabledFor(logging.DEBUG) and isinstance(request, Message):
            from google.protobuf import json_format  # only at debug level: a slow import at start-up

            fields["request"] = json_format.MessageToDict(redacted(request))
        log.log(logging.INFO if code is grpc.StatusCode.OK else logging.WARNING, "rpc", extra={"fields": fields})
