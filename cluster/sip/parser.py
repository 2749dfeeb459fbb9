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
from collections.abc import Callable

from cluster import speedups

from .address import parse_name_addr
from .errors import ParseError
from .fields import check_date, parse_content_length, parse_cseq, parse_max_forwards
from .grammar import is_token, split_commas
from .headers import _KEY_CACHE, SINGLE_HEADERS, canonical_name, header_key
from .message import _TOP_VIA, SIP_VERSION, Header, Message, Request, Response
from .uri import SipURI, parse_uri
from .via import parse_via

_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+\Z", re.IGNORECASE)
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) (.*)\Z", re.IGNORECASE | re.DOTALL)



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
    lines = data[:end].decode("utf-8", "surrogateescape").split("\r\n")
    message = _start_line(lines[0])
    headers, groups = header_fields(lines)
    message.headers = headers
    _check_fields(message, groups)

    body_start = end + 4
    body = data[body_start:]
    # _check_fields cached the parsed Content-Length (or None).
    length: int | None = message._cache["content-length"]  # type: ignore[assignment]
    if length is None:
        if not datagram:
            raise ParseError("Content-Length required on stream transports")
    elif length != len(body):
        if length > len(body):
            # RFC 3261 §18.3: a datagram shorter than Content-Length is an error.
            raise ParseError("Content-Length larger than the message body")
        body = body[:length]
        data = data[: body_start + length]
    message.body = body
    message._raw = data
    message._index = groups
    return message


def parse_complete(data: bytes, *, datagram: bool = True) -> Request | Response:
    """``parse_message`` plus every field the worker's own later layers read:
    the Via stack below the top (a proxy forwards by it, §16.7 step 3,
    §16.11) and a request's Expires and Path (the registrar, §10.3, RFC 3327)
    and Authorization and Proxy-Authorization (digest, §22). A message it
    returns raises no ParseError above the parse, so a broken field is
    answered 400 with its reason where the message enters (§8.2.6, §21.4.1),
    not met halfway through routing. Absent fields cost a dict lookup."""
    message = parse_message(data, datagram=datagram)
    groups = message._index  # set by parse_message: the ignores below
    vias = groups["via"]  # type: ignore[index]
    if len(vias) > 1 or "," in vias[0]:
        message.vias  # noqa: B018 - read to parse the rest; the top one was checked by parse_message
    if type(message) is Request:
        for key, read in _READ_LATER:
            if key in groups:  # type: ignore[operator]
                read(message)
    return message


_READ_LATER: tuple[tuple[str, Callable[[Request], object]], ...] = (
    ("expires", lambda m: m.expires),
    ("path", lambda m: m.paths),
    ("authorization", lambda m: m.authorizations),
    ("proxy-authorization", lambda m: m.proxy_authorizations),
)


# Methods seen on nearly every message skip the token check (RFC 3261 §25.1
# Method is a token; these are all tokens).
_COMMON_METHODS = frozenset((
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE",
    "INFO", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
))
_new = object.__new__


def _start_line(line: str) -> Request | Response:
    if line[:4].upper() == "SIP/":
        m = _STATUS_RE.match(line)
        if m is None:
            raise ParseError("malformed Status-Line")
        response = _new(Response)
        response.status = int(m.group(1))
        response.reason = m.group(2)
        response._cache = {}
        return response
    parts = line.split(" ")
    # RFC 3261 §25.1: Method SP Request-URI SP SIP-Version, single spaces
    # (RFC 4475 §3.1.2.8 lwsstart and §3.1.2.9 trws).
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ParseError("malformed Request-Line")
    method, uri_text, version = parts
    if method not in _COMMON_METHODS and not is_token(method):
        raise ParseError("malformed method")
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        if _VERSION_RE.match(version):
            raise ParseError("SIP version not supported", 505)
        raise ParseError("malformed Request-Line")
    uri = parse_uri(uri_text)
    if isinstance(uri, SipURI) and uri.headers:
        # RFC 3261 §19.1.1: headers are not allowed in a Request-URI
        # (RFC 4475 §3.1.2.7 escruri).
        raise ParseError("headers not allowed in the Request-URI")
    # parse_message fills headers, body, _raw and _index once they are known.
    request = _new(Request)
    request.method = method
    request._uri = uri
    request._start = line
    request._cache = {}
    return request


def _header_fields(lines: list[str]) -> tuple[list[Header], dict[str, list[str]]]:
    """Header fields in order, plus their values grouped by field key.

    ``lines[0]`` is the start line and is skipped.
    """
    headers: list[Header] = []
    groups: dict[str, list[str]] = {}
    append = headers.append
    known = _KEY_CACHE
    single = SINGLE_HEADERS
    new_header = _new
    lines_iter = iter(lines)
    next(lines_iter)
    for line in lines_iter:
        name, sep, value = line.partition(":")
        key = known.get(name)
        if key is None or not sep:
            # Cached names are tokens, so a continuation line (which starts
            # with whitespace) always lands here.
            if line[:1] in (" ", "\t"):
                _continue_field(headers, groups, line)
                continue
            if not sep:
                raise ParseError("header line without a colon")
            name = name.rstrip(" \t")
            key = header_key(name)
        value = value.strip(" \t")
        # Header.__init__ by hand: one Python call less per line.
        h = new_header(Header)
        h.key = key
        h.name = name
        h.value = value
        h.raw = line
        append(h)
        group = groups.get(key)
        if group is None:
            groups[key] = [value]
        elif key in single:
            # RFC 4475 §3.1.2.16 multi01, §3.3.2 mcl01.
            raise ParseError(f"more than one {name} header field")
        else:
            group.append(value)
    return headers, groups


def _continue_field(headers: list[Header], groups: dict[str, list[str]], line: str) -> None:
    # RFC 3261 §7.3.1: a line starting with whitespace continues the previous
    # field; the fold is equivalent to a single SP.
    if not headers:
        raise ParseError("continuation line before any header field")
    h = headers[-1]
    tail = line.strip(" \t")
    if tail:
        h.value = f"{h.value} {tail}" if h.value else tail
        groups[h.key][-1] = h.value
    h.raw = f"{h.raw}\r\n{line}"


header_fields: Callable[[list[str]], tuple[list[Header], dict[str, list[str]]]] = _header_fields
"""What parse_message uses: ``_header_fields`` (the specification), or its
compiled twin from cluster.speedups when that is built and not refused."""
if speedups.sip is not None:
    speedups.sip.setup(_KEY_CACHE, SINGLE_HEADERS, Header, header_key, _continue_field, ParseError)
    header_fields = speedups.sip.header_fields


# RFC 3261 §8.1.1: To, From, CSeq, Call-ID and Via are mandatory.
# Max-Forwards is too, but RFC 2543 elements omit it (RFC 4475 inv2543).
_MANDATORY = ("call-id", "cseq", "from", "to", "via")


def _check_fields(message: Message, groups: dict[str, list[str]]) -> None:
    """Validate the fields every element relies on and fill the accessor cache."""
    try:
        call_id = groups["call-id"][0]
        cseq_value = groups["cseq"][0]
        from_value = groups["from"][0]
        to_value = groups["to"][0]
        vias = groups["via"]
    except KeyError:
        for key in _MANDATORY:
            if key not in groups:
                raise ParseError(f"missing {canonical_name(key)} header field") from None
        raise  # pragma: no cover - every KeyError above is a missing field
    if not call_id or " " in call_id or "\t" in call_id:
        raise ParseError("malformed Call-ID")
    cache = message._cache
    cache["call-id"] = call_id
    cseq = cache["cseq"] = parse_cseq(cseq_value)
    cache["from"] = parse_name_addr(from_value)
    cache["to"] = parse_name_addr(to_value)
    # The top Via is validated now; the rest when a proxy routes a response.
    for value in vias:
        if not value or "," in value:
            top = _elements(vias)[0]
            break
    else:
        top = vias[0]
    cache[_TOP_VIA] = parse_via(top)
    values = groups.get("max-forwards")
    cache["max-forwards"] = None if values is None else parse_max_forwards(values[0])
    values = groups.get("content-length")
    cache["content-length"] = None if values is None else parse_content_length(values[0])
    is_request = type(message) is Request  # the ignores on message.method below
    contacts = groups.get("contact")
    if contacts is not None and contacts != ["*"] and (
            not is_request or message.method == "REGISTER"):  # type: ignore[attr-defined]
        # The registrar stores Contact values, so a REGISTER's are checked
        # now (RFC 4475 §3.1.2.11 regbadct); elsewhere a proxy passes them on
        # and they are parsed when read.
        cache["contact"] = [parse_name_addr(v) for v in _elements(contacts)]
    values = groups.get("route")
    if values is not None:
        cache["route"] = [parse_name_addr(v, brackets_required=True) for v in _elements(values)]
    values = groups.get("record-route")
    if values is not None:
        cache["record-route"] = [parse_name_addr(v, brackets_required=True) for v in _elements(values)]
    if is_request and cseq.method != message.method:  # type: ignore[attr-defined]
        # RFC 3261 §8.1.1.5 (RFC 4475 §3.1.2.14 mismatch01).
        raise ParseError("CSeq method does not match the Request-Line")
    date = groups.get("date")
    if date is not None:
        check_date(date[0])


def _elements(values: list[str]) -> list[str]:
    """List elements of a comma-list field; empty elements are malformed."""
    out: list[str] = []
    for value in values:
        if "," in value:
            parts = split_commas(value)
            if "" in parts:
                raise ParseError("empty element in header list")
            out.extend(parts)
        elif value:
            out.append(value)
        else:
            raise ParseError("empty header list value")
    return out
