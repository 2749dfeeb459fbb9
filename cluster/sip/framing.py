"""Cutting a byte stream (TCP, TLS) into SIP messages (RFC 3261 §18.3).

On a stream the Content-Length field is mandatory and delimits the body. The
framer is sans-IO: feed it what the socket gave, get back zero or more
complete messages. CRLFs between messages are skipped; a double CRLF is the
RFC 5626 §3.5.1 keep-alive "ping", reported as :data:`KEEPALIVE` so the edge
can answer it with a single CRLF "pong".
"""

from __future__ import annotations

import re

from .errors import ParseError
from .grammar import digits_to_int

KEEPALIVE = b"\r\n\r\n"
PONG = b"\r\n"

DEFAULT_MAX_MESSAGE = 65535

_LENGTH_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_START_LINE_RE = re.compile(
    rb"(?:[A-Za-z0-9\-.!%*_+`'~]+ [^ \r\n]+ SIP/[0-9]+\.[0-9]+|SIP/[0-9]+\.[0-9]+ [0-9]{3} )",
    re.IGNORECASE,
)


class StreamFramer:
    """Incremental framer for one stream connection.

    ``feed`` raises ParseError when the stream can no longer be framed (a SIP
    message without a usable Content-Length, or one larger than
    ``max_message``); the connection must then be closed (RFC 4475 §3.1.2.3
    ncl, §3.3.2 mcl01). Octets before the header end that do not start like a
    SIP message are discarded and counted in ``garbage_bytes``.
    """

    __slots__ = ("max_message", "_buffer", "garbage_bytes", "keepalives")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buffer = bytearray()
        self.garbage_bytes = 0
        self.keepalives = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        while buf:
            # Leading CRLFs: skip single ones, report double ones as pings.
            first = buf[0]
            if first == 0x0D or first == 0x0A:
                if buf[:4] == KEEPALIVE:
                    del buf[:4]
                    self.keepalives += 1
                    out.append(KEEPALIVE)
                elif len(buf) < 4 and KEEPALIVE.startswith(bytes(buf)):
                    break  # may still become a ping
                elif buf[:2] == PONG:
                    del buf[:2]
                else:
                    del buf[:1]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_message:
                    raise ParseError("message too large", 513)
                break
            lengths = _LENGTH_RE.findall(buf, 0, end + 2)
            if not lengths:
                if _START_LINE_RE.match(buf) is None:
                    self.garbage_bytes += end + 4
                    del buf[: end + 4]
                    continue
                raise ParseError("Content-Length required on stream transports")
            values = {v.strip(b" \t") for v in lengths}
            if len(values) != 1:
                raise ParseError("conflicting Content-Length values")
            text = values.pop()
            if not (text.isascii() and text.isdigit()):
                raise ParseError("malformed Content-Length")
            # Clamped just past the limit: a huge value is "too large" below.
            total = end + 4 + digits_to_int(text.decode("ascii"), self.max_message + 1)
            if total > self.max_message:
                raise ParseError("message too large", 513)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out
