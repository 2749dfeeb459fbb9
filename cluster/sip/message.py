"""SIP requests and responses: an ordered header list with typed, lazy accessors.

The header list keeps every field in arrival order, duplicates and unknown
fields included (RFC 3261 §7.3.1: a proxy forwards what it does not know). A
parsed message remembers its exact bytes; until something modifies it,
``to_bytes()`` returns them unchanged, so forwarding an unmodified message
costs nothing. A modified message serialises untouched fields exactly as
received and new or changed fields canonically, with Content-Length
recomputed from the body.

Typed accessors parse on first use and cache the result; the parser fills the
cache for the fields it validates, so reading them later is free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Self, TypeVar

from .address import NameAddress, parse_name_addr
from .auth import AuthField, parse_auth
from .errors import ParseError
from .fields import (
    CSeq, RetryAfter, parse_content_length, parse_cseq, parse_delta_seconds,
    parse_max_forwards, parse_retry_after,
)
from .grammar import split_commas
from .headers import LIST_HEADERS, canonical_name, header_key
from .uri import URI, parse_uri
from .via import Via, parse_via, via_text

T = TypeVar("T")

SIP_VERSION = "SIP/2.0"
_MISSING = object()
_TOP_VIA = "via:top"  # cache slot for the top Via alone
_PARSED_STATE = frozenset(("headers", "_index", "_cache"))
_RESTORES = [0]
"""How many compacted messages were parsed again (a test's and a benchmark's
check that the call path does not wake what it put to rest)."""


def restores() -> int:
    return _RESTORES[0]


class Header:
    """One header field line. ``raw`` is the exact received text (folding
    included) or None for a field we wrote, which serialises canonically."""

    __slots__ = ("key", "name", "value", "raw")

    def __init__(self, key: str, name: str, value: str, raw: str | None = None) -> None:
        self.key = key
        self.name = name
        self.value = value
        self.raw = raw

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {self.value!r})"


def _without_line(raw: bytes, line: str | None) -> bytes | None:
    """``raw`` without the header line ``line`` (as the parser kept it), or
    None when it cannot be found. The needle is a whole line and header
    lines precede the body, so the first match is the field itself."""
    if line is None:
        return None
    needle = f"\r\n{line}\r\n".encode("utf-8", "surrogateescape")
    at = raw.find(needle)
    if at < 0:
        return None
    return raw[:at] + raw[at + len(needle) - 2:]


def _list_of(parser: Callable[[str], T]) -> Callable[[list[str]], list[T]]:
    def parse_all(values: list[str]) -> list[T]:
        out = []
        for value in values:
            if not value:
                raise ParseError("empty element in header list")
            out.append(parser(value))
        return out
    return parse_all


_parse_vias = _list_of(parse_via)
_parse_addresses = _list_of(parse_name_addr)
_parse_routes = _list_of(lambda v: parse_name_addr(v, brackets_required=True))


class Message:
    __slots__ = ("headers", "body", "_raw", "_cache", "_index")

    def __init__(self, headers: Iterable[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        self.headers: list[Header] = []
        self.body = body
        self._raw: bytes | None = None
        self._cache: dict[str, object] = {}
        # Field values grouped by key, as the parser saw them; valid until
        # the first modification (lookups on received messages skip the scan).
        self._index: dict[str, list[str]] | None = None
        if headers:
            for name, value in headers:
                self.add(name, value)

    # -- rest and wake ----------------------------------------------------------

    def compact(self) -> None:
        """Keep only the message's bytes (and start line and body) until it is
        used again: the parsed header list, index and typed values are
        dropped and rebuilt from the bytes on the next access.

        A transaction outlives its last real use by up to 64×T1 = 32 s
        (Timers J, L and M, RFC 3261 §17 and RFC 6026), waiting only for
        retransmissions, which it answers from its key and the response's
        bytes. Parsed, a call's messages take ~27 KB; held as bytes, a few.
        The bytes are rendered first if the message was modified, so the
        send that usually follows costs nothing more."""
        if self.compacted:
            return
        self.to_bytes()
        del self.headers
        del self._index
        del self._cache

    @property
    def compacted(self) -> bool:
        try:
            object.__getattribute__(self, "_cache")
        except AttributeError:
            return True
        return False

    if not TYPE_CHECKING:
        # Hidden from the type checker, which would otherwise accept any
        # attribute name on a message.
        def __getattr__(self, name: str) -> object:
            # Only reached when a slot is empty, i.e. after compact().
            if name in _PARSED_STATE:
                self._restore()
                return object.__getattribute__(self, name)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _restore(self) -> None:
        # Parse the bytes again and take their header list, index and typed values.
        from .parser import parse_message
        # compact() rendered the bytes before dropping the rest, so _raw is set.
        parsed = parse_message(self._raw, datagram=True)  # type: ignore[arg-type]
        self.headers = parsed.headers
        self._index = parsed._index
        self._cache = parsed._cache
        _RESTORES[0] += 1

    # -- generic header access ------------------------------------------------

    def get(self, name: str) -> str | None:
        """Value of the first field called ``name`` (any case, compact or long)."""
        key = header_key(name)
        index = self._index
        if index is not None:
            values = index.get(key)
            return values[0] if values else None
        for h in self.headers:
            if h.key == key:
                return h.value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``; list-valued fields are split at their commas."""
        return self._values(header_key(name))

    def _values(self, key: str) -> list[str]:
        index = self._index
        if index is not None:
            values = index.get(key)
            if values is None:
                return []
            if key in LIST_HEADERS:
                out: list[str] = []
                for value in values:
                    out.extend(split_commas(value) if "," in value else (value,))
                return out
            return list(values)
        if key in LIST_HEADERS:
            out = []
            for h in self.headers:
                if h.key == key:
                    out.extend(split_commas(h.value))
            return out
        return [h.value for h in self.headers if h.key == key]

    def has(self, name: str) -> bool:
        key = header_key(name)
        if self._index is not None:
            return key in self._index
        return any(h.key == key for h in self.headers)

    def set(self, name: str, value: object) -> None:
        """Replace every ``name`` field by one with ``value`` (in the first one's place)."""
        key = header_key(name)
        new = Header(key, canonical_name(key), str(value))
        out = []
        placed = False
        for h in self.headers:
            if h.key == key:
                if not placed:
                    out.append(new)
                    placed = True
            else:
                out.append(h)
        if not placed:
            out.append(new)
        self.headers = out
        self._touch(key)

    def add(self, name: str, value: object, *, first: bool = False) -> None:
        """Add a field; ``first`` puts it before the other fields of its name
        (a new Via or Record-Route goes on top, RFC 3261 §16.6)."""
        key = header_key(name)
        new = Header(key, canonical_name(key), str(value))
        if first:
            for i, h in enumerate(self.headers):
                if h.key == key:
                    self.headers.insert(i, new)
                    break
            else:
                self.headers.append(new)
        else:
            self.headers.append(new)
        self._touch(key)

    def remove(self, name: str) -> int:
        key = header_key(name)
        before = len(self.headers)
        self.headers = [h for h in self.headers if h.key != key]
        removed = before - len(self.headers)
        if removed:
            self._touch(key)
        return removed

    def set_values(self, name: str, values: Iterable[object]) -> None:
        """Replace a list field by one field per value (none when empty)."""
        key = header_key(name)
        index = next((i for i, h in enumerate(self.headers) if h.key == key), len(self.headers))
        rest = [h for h in self.headers[index:] if h.key != key]
        fresh = [Header(key, canonical_name(key), str(v)) for v in values]
        self.headers = self.headers[:index] + fresh + rest
        self._touch(key)

    def _touch(self, key: str) -> None:
        self._raw = None
        self._index = None
        self._cache.pop(key, None)
        if key == "via":
            self._cache.pop(_TOP_VIA, None)

    # The cache maps each key to what its parser returned: the ignores below
    # give that value back its type.

    def _cached(self, key: str, parse: Callable[[list[str]], T]) -> T:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = parse(self._values(key))
            self._cache[key] = value
        return value  # type: ignore[return-value]

    def _single(self, key: str, parse: Callable[[str], T]) -> T | None:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            values = self._values(key)
            value = parse(values[0]) if values else None
            self._cache[key] = value
        return value  # type: ignore[return-value]

    # -- typed accessors ------------------------------------------------------

    # The mandatory fields below are read for every message a transaction
    # touches, and a parsed message always has them cached: look there first.

    @property
    def call_id(self) -> str:
        value = self._cache.get("call-id")
        if value is None:
            value = self._single("call-id", str)
            if value is None:
                raise ParseError("missing Call-ID")
        return value  # type: ignore[return-value]

    @property
    def cseq(self) -> CSeq:
        value = self._cache.get("cseq")
        if value is None:
            value = self._single("cseq", parse_cseq)
            if value is None:
                raise ParseError("missing CSeq")
        return value  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddress:
        value = self._cache.get("from")
        if value is None:
            value = self._single("from", parse_name_addr)
            if value is None:
                raise ParseError("missing From")
        return value  # type: ignore[return-value]

    @property
    def to(self) -> NameAddress:
        value = self._cache.get("to")
        if value is None:
            value = self._single("to", parse_name_addr)
            if value is None:
                raise ParseError("missing To")
        return value  # type: ignore[return-value]

    @property
    def vias(self) -> list[Via]:
        return self._cached("via", _parse_vias)

    @property
    def via(self) -> Via:
        """The topmost Via. Parsed on its own: the parser validates only the
        top value eagerly (it is all a transaction needs); the others are
        parsed when ``vias`` is read (a proxy routing a response)."""
        cache = self._cache
        # The cache maps each key to what its parser returned.
        vias: list[Via] | None = cache.get("via")  # type: ignore[assignment]
        if vias:
            return vias[0]
        top: Via | None = cache.get(_TOP_VIA)  # type: ignore[assignment]
        if top is None:
            for h in self.headers:
                if h.key == "via":
                    value = h.value
                    first = split_commas(value)[0] if "," in value else value
                    if not first:
                        raise ParseError("empty Via value")
                    top = cache[_TOP_VIA] = parse_via(first)
                    break
            else:
                raise ParseError("missing Via")
        return top

    @property
    def max_forwards(self) -> int | None:
        return self._single("max-forwards", parse_max_forwards)

    @property
    def content_length(self) -> int | None:
        return self._single("content-length", parse_content_length)

    @property
    def contacts(self) -> list[NameAddress]:
        """Contact values; empty for none and for ``Contact: *`` (see contact_star)."""
        if self.contact_star:
            return []
        return self._cached("contact", _parse_addresses)

    @property
    def contact_star(self) -> bool:
        values = self._values("contact")
        return len(values) == 1 and values[0] == "*"

    @property
    def routes(self) -> list[NameAddress]:
        return self._cached("route", _parse_routes)

    @property
    def record_routes(self) -> list[NameAddress]:
        return self._cached("record-route", _parse_routes)

    @property
    def paths(self) -> list[NameAddress]:
        return self._cached("path", _parse_routes)

    @property
    def expires(self) -> int | None:
        return self._single("expires", lambda v: parse_delta_seconds(v, "Expires"))

    @property
    def min_expires(self) -> int | None:
        return self._single("min-expires", lambda v: parse_delta_seconds(v, "Min-Expires"))

    @property
    def content_type(self) -> str | None:
        """Media type without parameters, lowercased (``application/sdp``)."""
        value = self.get("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip(" \t").lower()

    def _tags(self, key: str) -> list[str]:
        return self._cached(key, lambda values: [v for v in values if v])

    @property
    def require(self) -> list[str]:
        return self._tags("require")

    @property
    def proxy_require(self) -> list[str]:
        return self._tags("proxy-require")

    @property
    def supported(self) -> list[str]:
        return self._tags("supported")

    @property
    def unsupported(self) -> list[str]:
        return self._tags("unsupported")

    @property
    def allow(self) -> list[str]:
        return self._tags("allow")

    def _auth(self, key: str) -> list[AuthField]:
        return self._cached(key, lambda values: [parse_auth(v) for v in values])

    @property
    def authorizations(self) -> list[AuthField]:
        return self._auth("authorization")

    @property
    def proxy_authorizations(self) -> list[AuthField]:
        return self._auth("proxy-authorization")

    @property
    def www_authenticates(self) -> list[AuthField]:
        return self._auth("www-authenticate")

    @property
    def proxy_authenticates(self) -> list[AuthField]:
        return self._auth("proxy-authenticate")

    @property
    def retry_after(self) -> RetryAfter | None:
        return self._single("retry-after", parse_retry_after)

    @property
    def user_agent(self) -> str | None:
        return self.get("user-agent")

    # -- Via stack (RFC 3261 §16.6 step 8, §16.7 step 3) -------------------------

    def push_via(self, via: Via | str) -> None:
        self.add("via", via_text(via) if type(via) is Via else via, first=True)

    def set_top_via(self, via: Via) -> None:
        """Replace the topmost Via value (a server adding received/rport,
        RFC 3261 §18.2.1, RFC 3581 §4)."""
        for i, h in enumerate(self.headers):
            if h.key == "via":
                values = split_commas(h.value) if "," in h.value else [h.value]
                values[0] = via_text(via)
                self.headers[i] = Header("via", h.name, ", ".join(values))
                self._touch("via")
                self._cache[_TOP_VIA] = via
                return
        raise ParseError("missing Via")

    def pop_via(self) -> Via:
        """Remove the topmost Via value (which may share a field with others)."""
        # The whole stack, when it was read (the cache holds each key's parse).
        parsed: list[Via] | None = self._cache.get("via")  # type: ignore[assignment]
        for i, h in enumerate(self.headers):
            if h.key == "via":
                values = split_commas(h.value)
                top = parsed[0] if parsed else parse_via(values[0])
                raw = self._raw
                if len(values) == 1:
                    del self.headers[i]
                    spliced = _without_line(raw, h.raw) \
                        if raw is not None and self._cache.get("content-length") is not None else None
                else:
                    self.headers[i] = Header("via", h.name, ", ".join(values[1:]))
                    spliced = None
                self._touch("via")
                if parsed and len(parsed) > 1:
                    self._cache["via"] = parsed[1:]
                if spliced is not None:
                    # §16.7 step 3 on the bytes as received: a relayed
                    # response is the received one minus a line, so it
                    # is not rendered again.
                    self._raw = spliced
                return top
        raise ParseError("missing Via")

    # -- serialisation ----------------------------------------------------------

    def start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        raw = self._raw
        if raw is not None:
            return raw
        lines = [self.start_line()]
        body = self.body
        length_written = False
        for h in self.headers:
            if h.key == "content-length":
                if length_written:
                    continue
                lines.append(f"{h.name}: {len(body)}")
                length_written = True
            elif h.raw is not None:
                lines.append(h.raw)
            else:
                lines.append(f"{h.name}: {h.value}")
        if not length_written:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        data = "\r\n".join(lines).encode("utf-8", "surrogateescape") + body
        self._raw = data
        return data

    __bytes__ = to_bytes

    def copy(self) -> Self:
        clone = object.__new__(type(self))
        clone.headers = list(self.headers)
        clone.body = self.body
        clone._raw = self._raw
        clone._cache = dict(self._cache)
        clone._index = self._index
        return clone

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        self.body = body
        self._raw = None
        if content_type is not None:
            self.set("content-type", content_type)


class Request(Message):
    __slots__ = ("method", "_uri", "_start")

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self._uri = parse_uri(uri) if isinstance(uri, str) else uri
        self._start: str | None = None

    @property
    def uri(self) -> URI:
        return self._uri

    @uri.setter
    def uri(self, value: URI | str) -> None:
        self._uri = parse_uri(value) if isinstance(value, str) else value
        self._start = None
        self._raw = None

    def start_line(self) -> str:
        if self._start is not None:
            return self._start
        return f"{self.method} {self._uri} {SIP_VERSION}"

    def copy(self) -> Self:
        clone = super().copy()
        clone.method = self.method
        clone._uri = self._uri
        clone._start = self._start
        return clone

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._uri}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def copy(self) -> Self:
        clone = super().copy()
        clone.status = self.status
        clone.reason = self.reason
        return clone

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"
