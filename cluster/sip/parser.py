"""Bytes to messages: the start line, header fields and body (RFC 3261 §7, §18.3).

``parse_message`` reads one complete message: a UDP datagram, or one frame
cut by :class:`cluster.sip.framing.StreamFramer`. It validates what every
element relies on (start line, Via, From, To, Call-ID, CSeq, Max-Forwards,
Content-Length, Contact, Route, Record-Route, Date) so that a message it
returns can be processed without a later parse failure in those fields, and
leaves the rest to lazy accessors. Every failure is a ``ParseError`` carrying
the status to answer with.
"""

from __future__ import annotations

import re

from .errors import ParseError
from .fields import check_date
from .headers import SINGLE_HEADERS, header_key
from .message import SIP_VERSION, Header, Message, Request, Response
from .uri import SipURI, parse_uri
from .grammar import is_token

_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+\Z", re.IGNORECASE)
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) (.*)\Z", re.IGNORECASE | re.DOTALL)

# Fields validated while parsing: reading each through its accessor fills the
# message's cache, so the work is not repeated later.
_VALIDATED = ("vias", "from_", "to", "cseq", "max_forwards", "content_length", "contacts",
              "routes", "record_routes")


def parse_message(data: bytes, *, datagram: bool = True) -> Request | Response:
    """Parse one SIP message.

    ``datagram`` selects the §18.3 rules for message-oriented transports: a
    missing Content-Length means the body runs to the end of the datagram, and
    octets past Content-Length are discarded. For stream transports the framer
    has already cut the message at Content-Length, so both modes agree there.
    """
    if data[:1] in (b"\r", b"\n"):
        # RFC 3261 §7.5: ignore CRLFs before the start line.
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if not data:
            raise ParseError("empty message")
        raise ParseError("header section not terminated by an empty line")
    try:
        head = data[:end].decode("utf-8", "surrogateescape")
    except UnicodeDecodeError:  # pragma: no cover - surrogateescape never fails
        raise ParseError("undecodable header section") from None
    lines = head.split("\r\n")
    message = _start_line(lines[0])
    headers = _header_fields(lines)
    message.headers = headers

    body_start = end + 4
    body = data[body_start:]
    _check_fields(message, headers)
    length = message.content_length
    if length is None:
        if not datagram:
            raise ParseError("Content-Length required on stream transports")
        raw = data
    else:
        if length > len(body):
            # RFC 3261 §18.3: a datagram shorter than Content-Length is an error.
            raise ParseError("Content-Length larger than the message body")
        if length < len(body):
            body = body[:length]
            data = data[: body_start + length]
        raw = data
    message.body = body
    message._raw = raw
    return message


def _start_line(line: str) -> Request | Response:
    if line[:4].upper() == "SIP/":
        m = _STATUS_RE.match(line)
        if m is None:
            raise ParseError("malformed Status-Line")
        response = Response(int(m.group(1)), m.group(2))
        return response
    parts = line.split(" ")
    # RFC 3261 §25.1: Method SP Request-URI SP SIP-Version, single spaces
    # (RFC 4475 §3.1.2.8 lwsstart and §3.1.2.9 trws).
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ParseError("malformed Request-Line")
    method, uri_text, version = parts
    if not is_token(method):
        raise ParseError("malformed method")
    if version.upper() != SIP_VERSION:
        if _VERSION_RE.match(version):
            raise ParseError("SIP version not supported", 505)
        raise ParseError("malformed Request-Line")
    uri = parse_uri(uri_text)
    if isinstance(uri, SipURI) and uri.headers:
        # RFC 3261 §19.1.1: headers are not allowed in a Request-URI
        # (RFC 4475 §3.1.2.7 escruri).
        raise ParseError("headers not allowed in the Request-URI")
    request = Request.__new__(Request)
    Message.__init__(request)
    request.method = method
    request._uri = uri
    request._start = line
    return request


def _header_fields(lines: list[str]) -> list[Header]:
    headers: list[Header] = []
    append = headers.append
    for i in range(1, len(lines)):
        line = lines[i]
        if not line:
            continue
        first = line[0]
        if first == " " or first == "\t":
            # RFC 3261 §7.3.1: a line starting with whitespace continues the
            # previous field; the fold is equivalent to a single SP.
            if not headers:
                raise ParseError("continuation line before any header field")
            h = headers[-1]
            tail = line.strip(" \t")
            if tail:
                h.value = f"{h.value} {tail}" if h.value else tail
            h.raw = f"{h.raw}\r\n{line}"
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ParseError("header line without a colon")
        name = name.rstrip(" \t")
        append(Header(header_key(name), name, value.strip(" \t"), line))
    return headers


def _check_fields(message: Message, headers: list[Header]) -> None:
    seen: dict[str, str] = {}
    for h in headers:
        key = h.key
        if key in SINGLE_HEADERS:
            previous = seen.get(key)
            if previous is not None:
                # RFC 4475 §3.1.2.16 multi01, §3.3.2 mcl01.
                raise ParseError(f"more than one {h.name} header field")
            seen[key] = h.value
    is_request = isinstance(message, Request)
    # RFC 3261 §8.1.1: To, From, CSeq, Call-ID and Via are mandatory.
    # Max-Forwards is too, but RFC 2543 elements omit it (RFC 4475 inv2543).
    for key, name in (("call-id", "Call-ID"), ("cseq", "CSeq"), ("from", "From"), ("to", "To")):
        if key not in seen:
            raise ParseError(f"missing {name} header field")
    call_id = seen["call-id"]
    if not call_id or " " in call_id or "\t" in call_id:
        raise ParseError("malformed Call-ID")
    for attr in _VALIDATED:
        getattr(message, attr)
    if not message.vias:
        raise ParseError("missing Via header field")
    if is_request and message.cseq.method != message.method:  # type: ignore[attr-defined]
        # RFC 3261 §8.1.1.5 (RFC 4475 §3.1.2.14 mismatch01).
        raise ParseError("CSeq method does not match the Request-Line")
    date = seen.get("date")
    if date is not None:
        check_date(date)
