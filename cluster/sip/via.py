"""The Via header field (RFC 3261 §20.42, §18.2.1; RFC 3581 rport)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import ParseError
from .grammar import (
    TOKEN_CHARS, Params, digits_param, format_params, param_value, parse_params, remove_param,
    replace_param,
)

from .memo import MemoTable, remember

# sent-protocol LWS sent-by: SLASH is SWS "/" SWS, so spaces may surround each
# slash (RFC 4475 §3.1.1.1 wsinv). Hosts are names, IPv4, or bracketed IPv6.
_VIA_RE = re.compile(
    f"[ \\t]*([{TOKEN_CHARS}]+)[ \\t]*/[ \\t]*([{TOKEN_CHARS}]+)[ \\t]*/[ \\t]*([{TOKEN_CHARS}]+)"
    "[ \\t]+(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9\\-.]*[A-Za-z0-9])"
    "(?:[ \\t]*:[ \\t]*([0-9]{1,5}))?"
)

# RFC 3261 §8.1.1.7: a branch starting with the magic cookie was built by an
# RFC 3261 element and is unique per transaction.
MAGIC_COOKIE = "z9hG4bK"


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP/2.0"

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def branch(self) -> str | None:
        return param_value(self.params, "branch")

    @property
    def received(self) -> str | None:
        return param_value(self.params, "received")

    @property
    def maddr(self) -> str | None:
        return param_value(self.params, "maddr")

    @property
    def ttl(self) -> int | None:
        # RFC 3261 §20.42: ttl is 0 to 255.
        return digits_param(param_value(self.params, "ttl"), 255)

    @property
    def has_rport(self) -> bool:
        """RFC 3581 §4: the client asked for the source port to be echoed."""
        return param_value(self.params, "rport") is not None

    @property
    def rport(self) -> int | None:
        """The rport value filled in by a server, None if absent or empty."""
        # A value that is no port (RFC 3581 §4: 1*DIGIT, a UDP port) is
        # ignored: the response then goes to the sent-by port, never to a
        # port the socket layer refuses.
        return digits_param(param_value(self.params, "rport"), 65535)

    @property
    def rfc3261_branch(self) -> bool:
        branch = self.branch
        # RFC 4475 §3.1.2.13 (badbranch): the bare cookie is no unique id.
        return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7

    @property
    def reliable(self) -> bool:
        return self.transport not in ("UDP", "DTLS")

    def with_param(self, name: str, value: str | None) -> Via:
        return replace(self, params=replace_param(self.params, name, value))

    def without_param(self, name: str) -> Via:
        return replace(self, params=remove_param(self.params, name))

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"


class _ViaDraft:
    """Writable twin of Via with the same slots, for the parser's hot path.

    A frozen dataclass's __init__ sets every field through
    object.__setattr__, which costs about four times a plain slot store.
    parse_via runs once per message, so it fills a draft and then retypes
    it to Via, which CPython allows between classes of identical layout.
    """

    __slots__ = Via.__slots__
    # Declared for the type checker only: no values, so no class attributes.
    transport: str
    host: str
    port: int | None
    params: Params
    protocol: str


_MEMO: MemoTable[Via] = MemoTable()


def parse_via(value: str) -> Via:
    """One via-parm (the caller splits the list at commas)."""
    via = _MEMO.get(value)
    if via is not None:
        return via
    m = _VIA_RE.match(value)
    if m is None:
        raise ParseError(f"malformed Via {value[:60]!r}")
    name, version, transport, host, port = m.groups()
    port_num = None
    if port is not None:
        port_num = int(port)
        if port_num > 65535:
            raise ParseError("Via port out of range")
    params = parse_params(value, m.end()) if m.end() < len(value) else ()
    if name.upper() == "SIP" and version == "2.0":
        protocol = "SIP/2.0"
    else:
        protocol = f"{name}/{version}"
    draft = _ViaDraft()
    draft.transport = transport.upper()
    draft.host = host
    draft.port = port_num
    draft.params = params
    draft.protocol = protocol
    # Retyped in place (identical slots): the type checker cannot follow.
    draft.__class__ = Via  # type: ignore[assignment]
    parsed: Via = draft  # type: ignore[assignment]
    return remember(_MEMO, value, parsed)


def via_text(via: Via) -> str:
    """The Via value we write, remembered as its own parse: the responses
    that come back carry exactly this text at the top (§16.7 step 3), so
    matching them needs no parse."""
    text = str(via)
    remember(_MEMO, text, via)
    return text
