"""Authentication header fields (RFC 3261 §20.7, §20.27, §20.28, §20.44, §25.1).

WWW-Authenticate / Proxy-Authenticate carry a challenge, Authorization /
Proxy-Authorization a credential: an auth scheme followed by comma-separated
``name=value`` parameters. These fields are not comma lists (§7.3.1): a commas
separates parameters of one credential.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ParseError
from .grammar import TOKEN_CHARS, quote, unquote

_SCHEME_RE = re.compile(f"[ \\t]*([{TOKEN_CHARS}]+)[ \\t]+")
_AUTH_PARAM_RE = re.compile(
    f"[ \\t]*([{TOKEN_CHARS}]+)[ \\t]*=[ \\t]*"
    "(\"(?:[^\"\\\\]|\\\\.)*\"|[^\\s,\"]+)[ \\t]*(?:,|\\Z)"
)

# Parameters written as quoted strings when we build a header (RFC 3261 §25.1,
# RFC 8760 §2): the others (algorithm, qop in credentials, nc, stale) are tokens.
_QUOTED = frozenset({"realm", "nonce", "opaque", "username", "uri", "response", "cnonce", "domain"})


@dataclass(frozen=True, slots=True)
class AuthField:
    """A challenge or a credential: scheme plus parameters (values unquoted)."""

    scheme: str
    params: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.params:
            if key == lname:
                return value
        return None

    @property
    def is_digest(self) -> bool:
        return self.scheme.lower() == "digest"

    def __str__(self) -> str:
        parts = []
        # A challenge quotes its qop-options; a credential's qop is a bare
        # token (RFC 2617 §3.2.1 vs §3.2.2). Only credentials carry "response".
        challenge = self.get("response") is None
        for key, value in self.params:
            if key in _QUOTED or (key == "qop" and (challenge or "," in value)):
                parts.append(f"{key}={quote(value)}")
            else:
                parts.append(f"{key}={value}")
        return f"{self.scheme} " + ", ".join(parts)


def parse_auth(value: str) -> AuthField:
    m = _SCHEME_RE.match(value)
    if m is None:
        raise ParseError("malformed authentication field")
    scheme = m.group(1)
    pos = m.end()
    end = len(value.rstrip(" \t"))
    params = []
    while pos < end:
        p = _AUTH_PARAM_RE.match(value, pos)
        if p is None:
            raise ParseError(f"malformed auth-param near {value[pos:pos + 24]!r}")
        raw = p.group(2)
        params.append((p.group(1).lower(), unquote(raw) if raw[0] == '"' else raw))
        pos = p.end()
    return AuthField(scheme, tuple(params))


def make_auth(scheme: str, **params: str) -> AuthField:
    return AuthField(scheme, tuple((k.lower(), v) for k, v in params.items() if v is not None))
