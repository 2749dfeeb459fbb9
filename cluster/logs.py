"""Structured logs: one JSON object (or key=value line) per record.

Inside a call every line carries ``call_id``, ``trace_id`` and, when the call
is traced, ``span_id`` (DESIGN §9): the worker sets ``CALL_ID`` while it
processes a message (tasks it starts inherit it), and ``TraceContextFilter``
adds the ids. The trace id is derived from the Call-ID
(``cluster.observability.tracing.trace_id_for``), so it is there even when
tracing is off, and a line found in the logs leads to the call's trace.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

#: The Call-ID of the message being processed in this context (None outside a call).
CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("sipcluster_call_id", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.node:
            out["node"] = self.node
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TraceContextFilter(logging.Filter):
    """Adds ``call_id``, ``trace_id`` and ``span_id`` to records made inside a call."""

    def __init__(self) -> None:
        super().__init__()
        self._trace_ids: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        call_id = getattr(record, "call_id", None) or CALL_ID.get()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        elif call_id:
            record.trace_id = self._trace_id(str(call_id))
        if call_id and not hasattr(record, "call_id"):
            record.call_id = call_id
        return True

    def _trace_id(self, call_id: str) -> str:
        found = self._trace_ids.get(call_id)
        if found is None:
            from cluster.observability.tracing import trace_id_for

            if len(self._trace_ids) >= 4096:
                self._trace_ids.clear()
            found = self._trace_ids[call_id] = f"{trace_id_for(call_id):032x}"
        return found


class KeyValueFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = json.loads(super().format(record))
        return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}"
                        for k, v in fields.items())


def setup_logging(level: str = "info", fmt: str = "json", node: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else KeyValueFormatter(node))
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
