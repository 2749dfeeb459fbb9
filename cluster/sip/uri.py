"""URIs: SIP and SIPS (RFC 3261 §19.1, §25.1), tel (RFC 3966), anything else.

``parse_uri`` turns the text of one URI into an immutable value. Every part is
kept *as written* (still %-escaped), so serializing a parsed URI gives back
the input (the scheme is lowercased); meaning is applied only where the RFCs
say so: equality (§19.1.4), the address-of-record (§10.3) and the few
parameters a proxy acts on (transport, lr, maddr, user).

A scheme other than sip, sips or tel is not an error here: RFC 4475 §3.3.2
(unkscm) and §3.3.3 (novelsc) are well-formed requests answered with 416 by
the element that wants a SIP URI, so such URIs parse to ``AbsoluteURI``.

The grammar is the RFC 3261 one, with three tolerances that keep real
traffic flowing: '_' in host names (seen in the wild), a raw '#' in the user
part (RFC 2806 telephone-subscriber dtmf-digit), and the three-colon IPv6
form RFC 5118 §4.10 asks receivers to accept.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field

from cluster.sip.errors import ParseError
from cluster.sip.memo import bounded_cache

__all__ = [
    "URI",
    "AbsoluteURI",
    "SipURI",
    "TelURI",
    "parse_uri",
    "unescape",
]

# --- character classes, RFC 3261 §25.1 ---------------------------------------
# '%' is admitted by every class below and the escapes are checked on their own
# (_BAD_ESCAPE), which keeps each class a single linear scan.
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER = re.compile(rf"[{_UNRESERVED}&=+$,;?/#%]+")
_PASSWORD = re.compile(rf"[{_UNRESERVED}&=+$,%]*")
_PARAM = re.compile(rf"[{_UNRESERVED}\[\]/:&+$%]+")
_HNAME = re.compile(rf"[{_UNRESERVED}\[\]/?:+$%]+")
_HVALUE = re.compile(rf"[{_UNRESERVED}\[\]/?:+$%]*")
_HOST_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# RFC 3261 absoluteURI: uric = reserved / unreserved / escaped; '[' ']' (RFC 2732)
# and '#' (fragments in http URIs of Call-Info and friends) are tolerated.
_OPAQUE = re.compile(rf"[{_UNRESERVED};/?:@&=+$,\[\]#%]+")
_FORBIDDEN = re.compile(r"[\s<>]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")

# The common shape (no escapes, password, IPv6, headers, upper-case scheme):
# one match, then the same host/port/param checks as the careful parser.
# Every class is disjoint from the delimiter that follows it, so the match is
# linear even on hostile input.
_FAST_SIP = re.compile(
    r"(sips?):"
    rf"(?:([{_UNRESERVED}&=+$,]+)@)?"
    r"([A-Za-z0-9.\-]+)"
    r"(?::([0-9]{1,5}))?"
    rf"((?:;[{_UNRESERVED}\[\]/:&+$]+(?:=[{_UNRESERVED}\[\]/:&+$]+)?)*)"
)

# RFC 3966 §3
_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")
# RFC 3966 §3: a number is digits with visual separators, at least one digit.
# Checked as "only these characters" plus "one digit somewhere": a single
# pattern with the digit in the middle backtracks quadratically on a long
# number that fails at its end.
_GLOBAL_CHARS = re.compile(r"\+[0-9\-.()]*")
_GLOBAL_DIGIT = re.compile(r"[0-9]")
_LOCAL_CHARS = re.compile(r"[0-9A-Fa-f*#\-.()]*")
_LOCAL_DIGIT = re.compile(r"[0-9A-Fa-f*#]")


def _is_phone_number(number: str) -> bool:
    if number.startswith("+"):
        chars, digit = _GLOBAL_CHARS, _GLOBAL_DIGIT
    else:
        chars, digit = _LOCAL_CHARS, _LOCAL_DIGIT
    return chars.fullmatch(number) is not None and digit.search(number) is not None
_TEL_PNAME = re.compile(r"[A-Za-z0-9\-]+")
_TEL_PVALUE = re.compile(rf"[{_UNRESERVED}\[\]/:&+$=,?@%]+")

# RFC 3261 §19.1.4: "Characters other than those in the 'reserved' set (see
# RFC 2396) are equivalent to their '%' HEX HEX encoding." Only characters that
# may also appear unescaped are decoded; reserved ones, '%' itself and octets
# that never appear raw stay escaped (hex upper-cased). That keeps the mapping
# injective: %2541 becomes "%2541", never "%41" or "A" (RFC 4475 esc01), and
# %00 keeps its length (RFC 4475 escnull).
_DECODABLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()[]")

_DEFAULT_PORTS = {"sip": 5060, "sips": 5061}
# RFC 3261 §19.1.4: these never match a URI lacking them, even at their default.
_ALWAYS_COMPARED = frozenset(("user", "ttl", "method", "maddr", "transport"))


def unescape(text: str) -> str:
    """Decode every %HH escape; the octets are read as UTF-8.

    Raises ``ParseError`` for a '%' not followed by two hex digits and for
    escaped octets that are not UTF-8.
    """
    if "%" not in text:
        return text
    _check_escapes(text, "text")
    parts = text.split("%")
    out = bytearray(parts[0].encode())
    for part in parts[1:]:
        out.append(int(part[:2], 16))
        out += part[2:].encode()
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise ParseError(f"escaped octets are not UTF-8 in {_shown(text)}") from None


def _shown(text: str) -> str:
    """Quote input for a reason text, cut short: reasons end up in a
    Reason-Phrase or Warning header, and the input may be kilobytes long."""
    return repr(text if len(text) <= 48 else text[:45] + "...")


def _check_escapes(text: str, what: str) -> None:
    if "%" in text and _BAD_ESCAPE.search(text):
        raise ParseError(f"bad % escape in {what} {_shown(text)}")


def _canon(text: str) -> str:
    """The §19.1.4 comparison form of escapes (see _DECODABLE)."""
    if "%" not in text:
        return text
    return _ESCAPE.sub(_canon_escape, text)


def _canon_escape(match: re.Match[str]) -> str:
    hexdigits = match.group(1)
    char = chr(int(hexdigits, 16))
    return char if char in _DECODABLE else "%" + hexdigits.upper()


# --- values ------------------------------------------------------------------

Params = tuple[tuple[str, str | None], ...]
# RFC 3261 §19.1.4: the hashed part (scheme, userinfo, host, port, the
# parameters that must match, headers) and the parameters compared only when
# both URIs carry them.
_SipKey = tuple[tuple[object, ...], dict[str, str | None]]
# RFC 3966 §4: the number without visual separators and every parameter.
_TelKey = tuple[str, frozenset[tuple[str, str | None]]]


def _find_param(params: Params, name: str) -> int:
    """Index of the parameter called ``name`` (case-insensitive, escapes decoded)."""
    key = name.lower()
    for index, (pname, _) in enumerate(params):
        lowered = pname.lower()
        if lowered == key or ("%" in lowered and _canon(lowered).lower() == key):
            return index
    return -1


@dataclass(frozen=True, slots=True, eq=False)
class SipURI:
    """A sip: or sips: URI; every part as written, escapes kept."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    # Lazily built comparison key; the object stays immutable to its users.
    _key: _SipKey | None = field(default=None, init=False, repr=False, compare=False)

    # -- parameters --
    def param(self, name: str) -> str | None:
        """The value as written: None when absent, '' when present without value."""
        index = _find_param(self.params, name)
        if index < 0:
            return None
        value = self.params[index][1]
        return "" if value is None else value

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name) >= 0

    def _param_unescaped(self, name: str) -> str | None:
        value = self.param(name)
        return _canon(value) if value else None

    @property
    def transport(self) -> str | None:
        """Lowercased transport parameter (RFC 3261 §19.1.1), None if absent or empty."""
        value = self._param_unescaped("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        """Loose routing flag (RFC 3261 §19.1.1, §16.12)."""
        return _find_param(self.params, "lr") >= 0

    @property
    def maddr(self) -> str | None:
        return self._param_unescaped("maddr")

    @property
    def user_param(self) -> str | None:
        """Lowercased user parameter, e.g. 'phone' (RFC 3261 §19.1.1)."""
        value = self._param_unescaped("user")
        return value.lower() if value else None

    def with_param(self, name: str, value: str | None = None) -> SipURI:
        """A copy with ``name`` set (replaced in place if present, else appended)."""
        index = _find_param(self.params, name)
        if index < 0:
            params = (*self.params, (name, value))
        else:
            params = (*self.params[:index], (name, value), *self.params[index + 1 :])
        return dataclasses.replace(self, params=params)

    def without_param(self, name: str) -> SipURI:
        index = _find_param(self.params, name)
        if index < 0:
            return self
        return dataclasses.replace(self, params=self.params[:index] + self.params[index + 1 :])

    def without_headers(self) -> SipURI:
        """RFC 3261 §19.1.5: headers never reach a Request-URI."""
        return dataclasses.replace(self, headers=()) if self.headers else self

    # -- addressing --
    @property
    def host_port(self) -> tuple[str, int]:
        """Host as written and the port, defaulting per scheme (RFC 3261 §19.1.2)."""
        return self.host, self.port if self.port is not None else _DEFAULT_PORTS[self.scheme]

    def aor(self) -> str:
        """Canonical address-of-record (RFC 3261 §10.3 step 5).

        Parameters, headers and password are removed, the host lowercased and
        escapes brought to their §19.1.4 comparison form rather than fully
        decoded: the result stays a valid URI, URIs equal under §19.1.4 map to
        the same AOR, and escaped reserved characters or %00 (RFC 4475
        escnull) are not collapsed or lost.
        """
        hostport = _host_key(self.host)
        if self.port is not None:
            hostport = f"{hostport}:{self.port}"
        if self.user is None:
            return f"{self.scheme}:{hostport}"
        return f"{self.scheme}:{_canon(self.user)}@{hostport}"

    # -- text --
    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += (":", self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts += (":", str(self.port))
        for name, value in self.params:
            parts += (";", name) if value is None else (";", name, "=", value)
        if self.headers:
            parts += ("?", "&".join(f"{name}={value}" for name, value in self.headers))
        return "".join(parts)

    # -- RFC 3261 §19.1.4 equality --
    def _compare_key(self) -> _SipKey:
        key = self._key
        if key is None:
            strict: dict[str, str | None] = {}
            loose: dict[str, str | None] = {}
            for name, value in self.params:
                name = _canon(name).lower()
                value = None if value is None else _canon(value).lower()
                (strict if name in _ALWAYS_COMPARED else loose)[name] = value
            headers = frozenset((_canon(n).lower(), _canon(v).lower()) for n, v in self.headers)
            userinfo = (
                None if self.user is None else _canon(self.user),
                None if self.password is None else _canon(self.password),
            )
            hashed = (
                self.scheme,
                userinfo,
                _host_key(self.host),
                self.port,
                frozenset(strict.items()),
                headers,
            )
            key = (hashed, loose)
            object.__setattr__(self, "_key", key)
        return key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipURI):
            return NotImplemented
        if self is other:
            return True
        mine, my_loose = self._compare_key()
        theirs, their_loose = other._compare_key()
        if mine != theirs:
            return False
        # Other parameters count only when both URIs carry them.
        for name, value in my_loose.items():
            if name in their_loose and their_loose[name] != value:
                return False
        return True

    def __hash__(self) -> int:
        return hash(self._compare_key()[0])


def _host_key(host: str) -> str:
    """Lowercased host; IPv6 references in compressed form so spellings compare."""
    if host.startswith("["):
        inner = host[1:-1].replace(":::", "::")
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            return host.lower()
    return host.lower()


@dataclass(frozen=True, slots=True, eq=False)
class TelURI:
    """A tel: URI (RFC 3966); ``number`` is global ('+...') or local, as written."""

    number: str
    params: Params = ()
    _key: _TelKey | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def scheme(self) -> str:
        return "tel"

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    def param(self, name: str) -> str | None:
        index = _find_param(self.params, name)
        if index < 0:
            return None
        value = self.params[index][1]
        return "" if value is None else value

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name) >= 0

    def __str__(self) -> str:
        params = "".join(f";{n}" if v is None else f";{n}={v}" for n, v in self.params)
        return f"tel:{self.number}{params}"

    def _compare_key(self) -> _TelKey:
        # RFC 3966 §4: visual separators ignored in the number, phone-context
        # and ext; parameters in any order, all must be present in both;
        # comparison case-insensitive.
        key = self._key
        if key is None:
            params: list[tuple[str, str | None]] = []
            for name, value in self.params:
                name = name.lower()
                if value is not None:
                    value = _canon(value).lower()
                    if name == "ext" or (name == "phone-context" and value.startswith("+")):
                        value = value.translate(_VISUAL_SEPARATORS)
                params.append((name, value))
            key = (self.number.translate(_VISUAL_SEPARATORS).lower(), frozenset(params))
            object.__setattr__(self, "_key", key)
        return key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TelURI):
            return NotImplemented
        return self._compare_key() == other._compare_key()

    def __hash__(self) -> int:
        return hash(self._compare_key())


@dataclass(frozen=True, slots=True)
class AbsoluteURI:
    """Any other scheme (RFC 3261 absoluteURI); ``rest`` is everything after ':'."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


URI = SipURI | TelURI | AbsoluteURI


# --- parsing -----------------------------------------------------------------


@bounded_cache
def parse_uri(text: str) -> URI:
    """Parse one URI; raises ``ParseError`` (400) if it is malformed.

    Cached (``memo.bounded_cache``): URIs repeat heavily in SIP traffic and
    the results are immutable.
    """
    fast = _FAST_SIP.fullmatch(text)
    if fast is not None:
        return _parse_fast(fast)
    return _parse_careful(text)


class _SipURIDraft:
    """Writable twin of SipURI with the same slots.

    A frozen dataclass's __init__ sets each of its eight fields through
    object.__setattr__; _parse_fast runs for most URIs of most messages, so
    it fills a draft with plain slot stores and retypes it to SipURI, which
    CPython allows between classes of identical layout.
    """

    __slots__ = SipURI.__slots__
    # Declared for the type checker only: no values, so no class attributes.
    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: Params
    headers: tuple[tuple[str, str], ...]
    _key: _SipKey | None


def _parse_fast(match: re.Match[str]) -> SipURI:
    scheme, user, host, port_text, param_text = match.groups()
    _check_hostname(host)
    uri = _SipURIDraft()
    uri.scheme = scheme
    uri.user = user
    uri.password = None
    uri.host = host
    uri.port = None if port_text is None else _parse_port(port_text)
    uri.params = _parse_params(param_text[1:]) if param_text else ()
    uri.headers = ()
    uri._key = None
    # Retyped in place (identical slots): the type checker cannot follow.
    uri.__class__ = SipURI  # type: ignore[assignment]
    return uri  # type: ignore[return-value]


def _parse_careful(text: str) -> URI:
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        char = bad.group()
        if char in "<>":
            raise ParseError(f"'{char}' inside URI {_shown(text)} (RFC 4475 ltgtruri)")
        raise ParseError(f"whitespace inside URI {_shown(text)} (RFC 4475 lwsruri)")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise ParseError(f"URI without a scheme: {_shown(text)}")
    scheme = scheme.lower()
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        return _parse_tel(rest)
    if not _OPAQUE.fullmatch(rest):
        raise ParseError(f"invalid character in URI {_shown(text)}")
    _check_escapes(rest, "URI")
    return AbsoluteURI(scheme, rest)


def _parse_sip(scheme: str, rest: str) -> SipURI:
    user = password = None
    # Neither userinfo, host, parameters nor headers may hold a raw '@', so the
    # first one ends the userinfo even when the user part holds ';' or '?'
    # (RFC 4475 semiuri, intmeth).
    at = rest.find("@")
    if at >= 0:
        user, colon, secret = rest[:at].partition(":")
        if not user:
            raise ParseError("empty user part in SIP URI")
        if not _USER.fullmatch(user):
            raise ParseError(f"invalid character in user part {_shown(user)}")
        _check_escapes(user, "user part")
        if colon:
            if not _PASSWORD.fullmatch(secret):
                raise ParseError("invalid character in password")
            _check_escapes(secret, "password")
            password = secret
        rest = rest[at + 1 :]
    rest, question, header_text = rest.partition("?")
    hostport, semicolon, param_text = rest.partition(";")
    host, port = _parse_hostport(hostport)
    params = _parse_params(param_text) if semicolon else ()
    headers = _parse_headers(header_text) if question else ()
    return SipURI(scheme, user, password, host, port, params, headers)


def _parse_hostport(hostport: str) -> tuple[str, int | None]:
    if not hostport:
        raise ParseError("empty host in SIP URI")
    if hostport[0] == "[":
        close = hostport.find("]")
        if close < 0:
            raise ParseError(f"unterminated IPv6 reference {_shown(hostport)}")
        host = hostport[: close + 1]
        _check_ipv6(host[1:-1])
        tail = hostport[close + 1 :]
        if not tail:
            return host, None
        if tail[0] != ":":
            raise ParseError(f"unexpected text after IPv6 reference {_shown(hostport)}")
        return host, _parse_port(tail[1:])
    host, colon, port_text = hostport.partition(":")
    if colon and ":" in port_text:
        raise ParseError(
            f"invalid port in {_shown(hostport)}: an IPv6 address must be enclosed in '[' ']' (RFC 5118 §4.2)"
        )
    if not host:
        raise ParseError("empty host in SIP URI")
    _check_hostname(host)
    return host, _parse_port(port_text) if colon else None


def _check_hostname(host: str) -> None:
    # RFC 3261 §25.1 hostname / IPv4address, checked with str operations so
    # the cost stays linear in the length.
    if not _HOST_CHARS.fullmatch(host):
        raise ParseError(f"invalid character in host {_shown(host)}")
    name = host[:-1] if host[-1] == "." else host
    if not name or name[0] in ".-" or name[-1] == "-" or ".." in name or ".-" in name or "-." in name:
        raise ParseError(f"invalid host name {_shown(host)}")
    toplabel = name[name.rfind(".") + 1 :]
    if (toplabel.isascii() and toplabel.isdigit()):
        # An all-digit last label is not a toplabel: it must be an IPv4 address.
        octets = host.split(".")
        if len(octets) != 4 or not all((o.isascii() and o.isdigit()) and len(o) <= 3 and int(o) <= 255 for o in octets):
            raise ParseError(f"invalid IPv4 address {_shown(host)}")


def _check_ipv6(address: str) -> None:
    if not _IPV6_CHARS.fullmatch(address):
        raise ParseError(f"invalid IPv6 reference {_shown(address)}")
    try:
        ipaddress.IPv6Address(address)
        return
    except ValueError:
        pass
    # RFC 5118 §4.10: RFC 3261's ABNF lets "::" be followed by ':' IPv4address;
    # receivers must tolerate that three-colon spelling.
    head, sep, ipv4 = address.partition(":::")
    if sep and "." in ipv4 and ":" not in ipv4:
        try:
            ipaddress.IPv6Address(f"{head}::{ipv4}")
            return
        except ValueError:
            pass
    raise ParseError(f"invalid IPv6 reference {_shown(address)}")


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text):
        raise ParseError(f"invalid port {_shown(text)}")
    port = int(text)
    if port > 65535:
        raise ParseError(f"port {port} out of range")
    return port


def _parse_params(text: str) -> Params:
    """``text`` is what follows the first ';' of uri-parameters."""
    params = []
    for item in text.split(";"):
        name, equals, value = item.partition("=")
        if not name or not _PARAM.fullmatch(name):
            raise ParseError(f"invalid URI parameter {_shown(item)}")
        if equals:
            if not _PARAM.fullmatch(value):
                raise ParseError(f"invalid URI parameter value {_shown(item)}")
            _check_escapes(value, "URI parameter")
        _check_escapes(name, "URI parameter")
        params.append((name, value if equals else None))
    return tuple(params)


def _parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    headers = []
    for item in text.split("&"):
        name, equals, value = item.partition("=")
        if not equals or not _HNAME.fullmatch(name) or not _HVALUE.fullmatch(value):
            raise ParseError(f"invalid URI header {_shown(item)}")
        _check_escapes(item, "URI header")
        headers.append((name, value))
    return tuple(headers)


def _parse_tel(rest: str) -> TelURI:
    number, semicolon, param_text = rest.partition(";")
    if not _is_phone_number(number):
        raise ParseError(f"invalid telephone number {_shown(number)} (RFC 3966 §3)")
    # A local number without phone-context is a MUST violation of RFC 3966
    # §5.1.5, yet common; whether to route it is the application's call.
    params = []
    if semicolon:
        for item in param_text.split(";"):
            name, equals, value = item.partition("=")
            if not _TEL_PNAME.fullmatch(name) or (equals and not _TEL_PVALUE.fullmatch(value)):
                raise ParseError(f"invalid tel URI parameter {_shown(item)}")
            _check_escapes(value, "tel URI parameter")
            params.append((name, value if equals else None))
    return TelURI(number, tuple(params))
