"""SDP session descriptions (RFC 8866): parse and serialize, no I/O.

Bodies come from the network, so the parser is liberal where RFC 8866 §5 allows
it (bare LF line ends, extra blanks between fields, any order of the optional
lines inside one level) and strict where a guess would mislead offer/answer:
a missing v=/o=/s=/t=, an unknown line type, a bad number, a malformed m= line
or a field that only belongs at session level appearing in a media section
raise :class:`~cluster.sip.errors.ParseError` (status 400).

:meth:`SessionDescription.serialize` writes the RFC 8866 §5 order with CRLF, so a
description that was already in that order comes back byte for byte.

Text is UTF-8 (the RFC 8866 §5 default). Bytes that are not UTF-8 (bodies with
an ``a=charset`` attribute, RFC 8866 §6.10) are carried as lone surrogates
('surrogateescape') so they survive a parse/serialize round trip unchanged.

The two description classes are mutable, unlike the rest of the SIP core:
applications (B2BUAs, media anchors) rewrite ports, addresses and attributes
in place. The small values inside them (origin, connection, attribute...) stay
frozen; replace them rather than editing them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import ParseError

__all__ = [
    "Attribute",
    "Bandwidth",
    "Connection",
    "DIRECTIONS",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "STATIC_PAYLOAD_TYPES",
    "SessionDescription",
    "TimeDescription",
    "parse_sdp",
]

# RFC 8866 §6.7: the four direction attributes are property attributes.
DIRECTIONS = frozenset(("sendrecv", "sendonly", "recvonly", "inactive"))

# Bound on digit strings so a hostile body cannot make int() do real work;
# 20 digits hold any 64-bit value (NTP times, session ids).
_MAX_DIGITS = 20

# RFC 8866 §9: typed-time = 1*DIGIT [fixed-len-time-unit]
_TYPED_TIME = re.compile(r"[0-9]{1,20}[dhms]?\Z")
_OFFSET_TIME = re.compile(r"-?[0-9]{1,20}[dhms]?\Z")
# RFC 8866 §6.6: a=rtpmap:<payload type> <encoding name>/<clock rate>[/<encoding parameters>]
_RTPMAP = re.compile(r"([^ ]+) +([^/ ]+)/([0-9]{1,10})(?:/([0-9]{1,10}))? *\Z")


@dataclass(frozen=True, slots=True)
class Origin:
    """The o= line (RFC 8866 §5.2): who made the description and which version."""

    username: str
    sess_id: int
    sess_version: int
    nettype: str
    addrtype: str
    # RFC 5118 §4.7: an IPv6 address here has no brackets.
    address: str


@dataclass(frozen=True, slots=True)
class Connection:
    """A c= line (RFC 8866 §5.7); ``ttl``/``num`` only for multicast addresses."""

    nettype: str
    addrtype: str
    address: str
    ttl: int | None = None
    num: int | None = None


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """A b= line (RFC 8866 §5.8), bandwidth in kbit/s for CT and AS."""

    bwtype: str
    bandwidth: int


@dataclass(frozen=True, slots=True)
class TimeDescription:
    """A t= line and the r= lines that follow it (RFC 8866 §5.9, §5.10)."""

    start: int
    stop: int
    repeats: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Attribute:
    """An a= line (RFC 8866 §5.13): a property (``value is None``) or name:value.

    ``a=foo:`` (value ``""``) and ``a=foo`` (value ``None``) stay distinct so
    serialisation gives back what was received.
    """

    name: str
    value: str | None = None


class RtpMap(NamedTuple):
    """What a payload type means (RFC 8866 §6.6); channels is None when omitted."""

    encoding: str
    clock_rate: int
    channels: int | None


# RFC 3551 §6, Tables 4 and 5: payload types usable without an a=rtpmap line.
# 2 (once G721) is left out: RFC 3551 §4.5.4 retired that assignment.
STATIC_PAYLOAD_TYPES: dict[str, RtpMap] = {
    "0": RtpMap("PCMU", 8000, 1),
    "3": RtpMap("GSM", 8000, 1),
    "4": RtpMap("G723", 8000, 1),
    "5": RtpMap("DVI4", 8000, 1),
    "6": RtpMap("DVI4", 16000, 1),
    "7": RtpMap("LPC", 8000, 1),
    "8": RtpMap("PCMA", 8000, 1),
    "9": RtpMap("G722", 8000, 1),
    "10": RtpMap("L16", 44100, 2),
    "11": RtpMap("L16", 44100, 1),
    "12": RtpMap("QCELP", 8000, 1),
    "13": RtpMap("CN", 8000, 1),
    "14": RtpMap("MPA", 90000, None),
    "15": RtpMap("G728", 8000, 1),
    "16": RtpMap("DVI4", 11025, 1),
    "17": RtpMap("DVI4", 22050, 1),
    "18": RtpMap("G729", 8000, 1),
    "25": RtpMap("CelB", 90000, None),
    "26": RtpMap("JPEG", 90000, None),
    "28": RtpMap("nv", 90000, None),
    "31": RtpMap("H261", 90000, None),
    "32": RtpMap("MPV", 90000, None),
    "33": RtpMap("MP2T", 90000, None),
    "34": RtpMap("H263", 90000, None),
}


def _direction_in(attributes: list[Attribute]) -> str | None:
    for attr in attributes:
        if attr.value is None and attr.name in DIRECTIONS:
            return attr.name
    return None


@dataclass(slots=True)
class MediaDescription:
    """An m= section (RFC 8866 §5.14) with the lines that follow it."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    information: str | None = None
    # RFC 8866 §5.7: a media section may carry several c= lines (layered
    # multicast, or RFC 5118 §4.8 mixed address families across sections).
    connections: list[Connection] = field(default_factory=list)
    bandwidths: list[Bandwidth] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)

    def rtpmap(self) -> dict[str, RtpMap]:
        """The a=rtpmap lines by payload type; malformed ones are ignored
        (RFC 8866 §5.13 lets a receiver ignore an attribute it cannot use)."""
        out: dict[str, RtpMap] = {}
        for attr in self.attributes:
            if attr.name == "rtpmap" and attr.value is not None:
                m = _RTPMAP.match(attr.value)
                if m is not None and m.group(1) not in out:
                    out[m.group(1)] = _rtpmap_of(m)
        return out

    def codec(self, fmt: str) -> RtpMap | None:
        """What ``fmt`` means: its a=rtpmap line, else the RFC 3551 static
        assignment when the transport is an RTP profile, else None."""
        prefix = fmt + " "
        for attr in self.attributes:
            if attr.name == "rtpmap" and attr.value is not None and attr.value.startswith(prefix):
                m = _RTPMAP.match(attr.value)
                if m is not None:
                    return _rtpmap_of(m)
        if "RTP/" in self.proto:
            return STATIC_PAYLOAD_TYPES.get(fmt)
        return None

    def fmtp(self, fmt: str) -> str | None:
        """The parameters of ``a=fmtp:<fmt> <parameters>`` (RFC 8866 §6.15)."""
        for attr in self.attributes:
            if attr.name == "fmtp" and attr.value is not None:
                pt, _, params = attr.value.partition(" ")
                if pt == fmt:
                    return params.lstrip(" ")
        return None

    @property
    def direction(self) -> str | None:
        """The direction attribute written in this section, None if absent;
        :meth:`SessionDescription.direction` applies the session default."""
        return _direction_in(self.attributes)

    @direction.setter
    def direction(self, value: str | None) -> None:
        if value is not None and value not in DIRECTIONS:
            raise ValueError(f"not an SDP direction: {value!r}")
        attrs = self.attributes
        index = None
        kept = []
        for attr in attrs:
            if attr.value is None and attr.name in DIRECTIONS:
                if index is None:
                    index = len(kept)
                continue
            kept.append(attr)
        if value is not None:
            kept.insert(len(kept) if index is None else index, Attribute(value))
        attrs[:] = kept

    def _append_lines(self, out: list[str]) -> None:
        # RFC 8866 §5: m= i= c=* b=* k= a=*
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        out.append(f"m={self.media} {port} {self.proto} {' '.join(self.formats)}")
        if self.information is not None:
            out.append("i=" + self.information)
        for conn in self.connections:
            out.append(_format_connection(conn))
        for bw in self.bandwidths:
            out.append(f"b={bw.bwtype}:{bw.bandwidth}")
        if self.key is not None:
            out.append("k=" + self.key)
        for attr in self.attributes:
            out.append("a=" + attr.name if attr.value is None else f"a={attr.name}:{attr.value}")


@dataclass(slots=True)
class SessionDescription:
    """A whole SDP body (RFC 8866 §5)."""

    origin: Origin
    session_name: str = "-"
    version: int = 0
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    # RFC 8866 §5: one or more time descriptions; "t=0 0" is the usual
    # unbounded session (RFC 3264 §5).
    times: list[TimeDescription] = field(default_factory=lambda: [TimeDescription(0, 0)])
    # z= adjustment pairs (RFC 8866 §5.11): (NTP time, offset typed-time).
    timezones: list[tuple[int, str]] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    def direction(self, media: MediaDescription | None = None) -> str:
        """The effective direction: the media section's attribute, else the
        session's, else sendrecv (RFC 3264 §5.1, RFC 8866 §6.7)."""
        if media is not None:
            found = _direction_in(media.attributes)
            if found is not None:
                return found
        return _direction_in(self.attributes) or "sendrecv"

    def effective_connection(self, media: MediaDescription) -> Connection | None:
        """The c= that applies to ``media``: its own first one, else the
        session-level one (RFC 8866 §5.7)."""
        if media.connections:
            return media.connections[0]
        return self.connection

    def serialize(self) -> bytes:
        """The description as bytes in RFC 8866 §5 order with CRLF line ends.

        Raises ValueError if an application put a line break or NUL into a
        field, which would otherwise inject lines into the body.
        """
        o = self.origin
        out = [
            f"v={self.version}",
            f"o={o.username} {o.sess_id} {o.sess_version} {o.nettype} {o.addrtype} {o.address}",
            "s=" + self.session_name,
        ]
        if self.information is not None:
            out.append("i=" + self.information)
        if self.uri is not None:
            out.append("u=" + self.uri)
        for email in self.emails:
            out.append("e=" + email)
        for phone in self.phones:
            out.append("p=" + phone)
        if self.connection is not None:
            out.append(_format_connection(self.connection))
        for bw in self.bandwidths:
            out.append(f"b={bw.bwtype}:{bw.bandwidth}")
        for t in self.times:
            out.append(f"t={t.start} {t.stop}")
            for repeat in t.repeats:
                out.append("r=" + repeat)
        if self.timezones:
            out.append("z=" + " ".join(f"{when} {offset}" for when, offset in self.timezones))
        if self.key is not None:
            out.append("k=" + self.key)
        for attr in self.attributes:
            out.append("a=" + attr.name if attr.value is None else f"a={attr.name}:{attr.value}")
        for media in self.media:
            media._append_lines(out)
        lines = len(out)
        out.append("")
        text = "\r\n".join(out)
        if text.count("\n") != lines or text.count("\r") != lines or "\x00" in text:
            raise ValueError("an SDP field contains a line break or NUL")
        return text.encode("utf-8", "surrogateescape")

    to_bytes = serialize
    __bytes__ = serialize


def _rtpmap_of(m: re.Match[str]) -> RtpMap:
    channels = m.group(4)
    return RtpMap(m.group(2), int(m.group(3)), None if channels is None else int(channels))


def _format_connection(conn: Connection) -> str:
    address = conn.address
    if conn.ttl is not None:
        address = f"{address}/{conn.ttl}"
    if conn.num is not None:
        address = f"{address}/{conn.num}"
    return f"c={conn.nettype} {conn.addrtype} {address}"


def _uint(text: str, what: str) -> int:
    # str.isdigit() alone accepts non-ASCII digits such as '²' that int() rejects.
    if 0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    raise ParseError(f"bad {what} in SDP: {text[:24]!r}")


def _parse_origin(value: str) -> Origin:
    # RFC 8866 §5.2: o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>
    parts = value.split()
    if len(parts) != 6:
        raise ParseError("bad o= line in SDP")
    return Origin(
        parts[0],
        _uint(parts[1], "o= session id"),
        _uint(parts[2], "o= session version"),
        parts[3],
        parts[4],
        parts[5],
    )


def _parse_connection(value: str) -> Connection:
    # RFC 8866 §5.7: c=<nettype> <addrtype> <connection-address>; an IPv4
    # multicast address carries /ttl[/num], an IPv6 one only /num.
    parts = value.split()
    if len(parts) != 3:
        raise ParseError("bad c= line in SDP")
    nettype, addrtype, address = parts
    ttl = num = None
    if "/" in address:
        kind = addrtype.upper()
        if kind == "IP4" or kind == "IP6":
            pieces = address.split("/")
            address = pieces[0]
            if not address or len(pieces) > (3 if kind == "IP4" else 2):
                raise ParseError("bad c= address in SDP")
            if kind == "IP4":
                ttl = _uint(pieces[1], "c= TTL")
                if len(pieces) == 3:
                    num = _uint(pieces[2], "c= address count")
            else:
                num = _uint(pieces[1], "c= address count")
    return Connection(nettype, addrtype, address, ttl, num)


def _parse_bandwidth(value: str) -> Bandwidth:
    # RFC 8866 §5.8: b=<bwtype>:<bandwidth>
    bwtype, sep, amount = value.partition(":")
    if not sep or not bwtype:
        raise ParseError("bad b= line in SDP")
    return Bandwidth(bwtype, _uint(amount.strip(), "bandwidth"))


def _parse_time(value: str) -> TimeDescription:
    # RFC 8866 §5.9: t=<start-time> <stop-time>
    parts = value.split()
    if len(parts) != 2:
        raise ParseError("bad t= line in SDP")
    return TimeDescription(_uint(parts[0], "start time"), _uint(parts[1], "stop time"))


def _parse_repeat(value: str) -> str:
    # RFC 8866 §5.10: r=<repeat interval> <active duration> <offsets from start-time>
    parts = value.split()
    if len(parts) < 3 or not all(_TYPED_TIME.match(p) for p in parts):
        raise ParseError("bad r= line in SDP")
    return " ".join(parts)


def _parse_timezones(value: str) -> list[tuple[int, str]]:
    # RFC 8866 §5.11: z=<adjustment time> <offset> <adjustment time> <offset> ...
    parts = value.split()
    if not parts or len(parts) % 2:
        raise ParseError("bad z= line in SDP")
    out = []
    for i in range(0, len(parts), 2):
        offset = parts[i + 1]
        if _OFFSET_TIME.match(offset) is None:
            raise ParseError("bad z= offset in SDP")
        out.append((_uint(parts[i], "z= adjustment time"), offset))
    return out


def _parse_media(value: str) -> MediaDescription:
    # RFC 8866 §5.14: m=<media> <port>[/<number of ports>] <proto> <fmt> ...
    parts = value.split()
    if len(parts) < 4:
        raise ParseError("bad m= line in SDP")
    port_text, slash, count_text = parts[1].partition("/")
    port = _uint(port_text, "m= port")
    if port > 65535:
        raise ParseError(f"bad m= port in SDP: {port}")
    count = None
    if slash:
        count = _uint(count_text, "m= port count")
        if count == 0:
            raise ParseError("bad m= port count in SDP: 0")
    return MediaDescription(parts[0], port, parts[2], parts[3:], count)


def _once(current: object, kind: str) -> None:
    if current is not None:
        raise ParseError(f"more than one {kind}= line in SDP")


def parse_sdp(data: bytes | bytearray | memoryview | str) -> SessionDescription:
    """Parse an SDP body; raises ParseError (400) if it is not acceptable SDP."""
    if isinstance(data, str):
        text = data
    else:
        text = bytes(data).decode("utf-8", "surrogateescape")
    if "\x00" in text:
        raise ParseError("NUL in SDP")
    # RFC 8866 §5: lines end in CRLF, but parsers should accept a bare LF.
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            raise ParseError("bare CR in SDP")
    lines = text.split("\n")
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not lines[0].startswith("v="):
        raise ParseError("SDP does not start with a v= line")
    if lines[0] != "v=0":
        raise ParseError(f"unsupported SDP version {lines[0][2:12]!r}")

    origin: Origin | None = None
    session_name: str | None = None
    information: str | None = None
    uri: str | None = None
    emails: list[str] = []
    phones: list[str] = []
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = []
    times: list[TimeDescription] = []
    timezones: list[tuple[int, str]] | None = None
    key: str | None = None
    attributes: list[Attribute] = []
    media_list: list[MediaDescription] = []
    media: MediaDescription | None = None

    for i in range(1, len(lines)):
        line = lines[i]
        # RFC 8866 §5: <type>=<value>, one letter, no blanks around '='.
        if len(line) < 2 or line[1] != "=":
            raise ParseError(f"SDP line is not <type>=<value>: {line[:32]!r}")
        kind = line[0]
        value = line[2:]
        if kind == "a":
            name, sep, attr_value = value.partition(":")
            if not name:
                raise ParseError("SDP a= line without a name")
            attr = Attribute(name, attr_value if sep else None)
            (attributes if media is None else media.attributes).append(attr)
        elif kind == "m":
            media = _parse_media(value)
            media_list.append(media)
        elif media is not None:
            if kind == "c":
                media.connections.append(_parse_connection(value))
            elif kind == "b":
                media.bandwidths.append(_parse_bandwidth(value))
            elif kind == "i":
                _once(media.information, kind)
                media.information = value
            elif kind == "k":
                _once(media.key, kind)
                media.key = value
            elif kind in "vosuepzrt":
                raise ParseError(f"SDP {kind}= line inside a media description")
            else:
                raise ParseError(f"unknown SDP line type {kind!r}")
        elif kind == "c":
            _once(connection, kind)
            connection = _parse_connection(value)
        elif kind == "o":
            _once(origin, kind)
            origin = _parse_origin(value)
        elif kind == "s":
            _once(session_name, kind)
            # RFC 8866 §5.3 asks for a non-empty s=, but RFC 5118 §4.8 and
            # many endpoints send "s=" bare; nothing downstream needs it.
            session_name = value
        elif kind == "t":
            times.append(_parse_time(value))
        elif kind == "b":
            bandwidths.append(_parse_bandwidth(value))
        elif kind == "r":
            if not times:
                raise ParseError("SDP r= line without a t= line")
            last = times[-1]
            repeats = last.repeats + (_parse_repeat(value),)
            times[-1] = TimeDescription(last.start, last.stop, repeats)
        elif kind == "i":
            _once(information, kind)
            information = value
        elif kind == "u":
            _once(uri, kind)
            uri = value
        elif kind == "e":
            emails.append(value)
        elif kind == "p":
            phones.append(value)
        elif kind == "z":
            _once(timezones, kind)
            timezones = _parse_timezones(value)
        elif kind == "k":
            _once(key, kind)
            key = value
        elif kind == "v":
            raise ParseError("more than one v= line in SDP")
        else:
            # RFC 8866 §5: a description with an unknown type letter must be ignored.
            raise ParseError(f"unknown SDP line type {kind!r}")

    if origin is None:
        raise ParseError("SDP has no o= line")
    if session_name is None:
        raise ParseError("SDP has no s= line")
    if not times:
        raise ParseError("SDP has no t= line")
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        version=0,
        information=information,
        uri=uri,
        emails=emails,
        phones=phones,
        connection=connection,
        bandwidths=bandwidths,
        times=times,
        timezones=timezones or [],
        key=key,
        attributes=attributes,
        media=media_list,
    )
