"""Call-ID without a full parse: the edge's per-message fast path.

The edge only needs the Call-ID to pick the owning shard (DESIGN §2). A byte
search for the canonical spelling covers nearly all traffic; anything else
(other case, compact form ``i``, space before the colon, folded value) takes a
regular-expression path over the header section that follows the same
§7.3.1 rules as the full parser, so both agree on every message the full
parser accepts.
"""

from __future__ import annotations

import re

from .errors import ParseError

_CANONICAL = b"\r\nCall-ID:"
_FIELD_RE = re.compile(rb"\r\n(?:call-id|i)[ \t]*:", re.IGNORECASE)
_FOLD_RE = re.compile(rb"(?:[ \t]*\r\n[ \t]+)+")
_WS = b" \t"


def extract_call_id(data: bytes) -> bytes:
    """The Call-ID of ``data`` as bytes; ParseError if there is none."""
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = len(data)
    start = data.find(_CANONICAL, 0, end)
    if start >= 0:
        start += 10
        stop = data.find(b"\r\n", start)
        if stop < 0:
            stop = end
        after = data[stop + 2:stop + 3]
        if stop == end or (after != b" " and after != b"\t"):
            value = data[start:stop].strip(_WS)
            if value:
                return value
    return _slow_path(data, end)


def _slow_path(data: bytes, end: int) -> bytes:
    m = _FIELD_RE.search(data, 0, end)
    if m is None:
        raise ParseError("no Call-ID header field")
    start = m.end()
    stop = start
    while True:
        stop = data.find(b"\r\n", stop)
        if stop < 0 or stop >= end:
            stop = end
            break
        if data[stop + 2:stop + 3] in (b" ", b"\t"):
            stop += 2
            continue
        break
    value = _FOLD_RE.sub(b" ", data[start:stop]).strip(_WS)
    if not value:
        raise ParseError("empty Call-ID")
    return value
