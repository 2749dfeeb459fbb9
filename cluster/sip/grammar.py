"""Low-level tokens of the RFC 3261 §25.1 grammar shared by every header parser.

Only what more than one header needs lives here: tokens, quoted strings,
generic parameters and the comma splitting rule. Header-specific grammar stays
in the module of that header.
"""

from __future__ import annotations

import re

from .errors import ParseError

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = "A-Za-z0-9\\-.!%*_+`'~"
TOKEN_RE = re.compile(f"[{TOKEN_CHARS}]+")
_TOKEN_FULL = re.compile(f"[{TOKEN_CHARS}]+\\Z")
# Display names written without quotes: *(token LWS). RFC 4475 §3.1.1.6 (lwsdisp)
# asks us to accept a display name directly followed by '<'.
_TOKEN_WORDS = re.compile(f"[{TOKEN_CHARS}]+(?:[ \\t]+[{TOKEN_CHARS}]+)*\\Z")

# A generic-param value: token / host / quoted-string (RFC 3261 §25.1 gen-value).
# Hosts add '[', ']' and ':' for IPv6 references (RFC 5118 §4.5 accepts a
# bracketed received= value).
_PARAM_RE = re.compile(
    f"[ \\t]*;[ \\t]*([{TOKEN_CHARS}]+)"
    f"(?:[ \\t]*=[ \\t]*([{TOKEN_CHARS}\\[\\]:]+|\"(?:[^\"\\\\]|\\\\.)*\"))?[ \\t]*"
)

Params = tuple[tuple[str, "str | None"], ...]


def is_token(text: str) -> bool:
    return _TOKEN_FULL.match(text) is not None


def is_token_words(text: str) -> bool:
    return _TOKEN_WORDS.match(text) is not None


def parse_params(text: str, pos: int = 0) -> Params:
    """Parse ``*( SEMI generic-param )`` from ``text[pos:]`` to the end.

    Values keep their quotes when quoted, so serialising them back is exact;
    callers use :func:`unquote` where they need the content. An empty
    parameter (``;;``) is malformed (RFC 4475 §3.1.2.1 badinv01).
    """
    params: list[tuple[str, str | None]] = []
    end = len(text)
    match = _PARAM_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            if text[pos:].strip(" \t") == "":
                break
            raise ParseError(f"malformed parameter near {text[pos:pos + 24]!r}")
        params.append((m.group(1), m.group(2)))
        pos = m.end()
    return tuple(params)


# More digits than any limit we clamp to needs (2**64 has 20). Python refuses
# int() of over 4,300 digits with ValueError, and the conversion's cost grows
# with the length, so longer strings are judged by their length instead.
_MAX_DIGITS = 20


def digits_to_int(text: str, limit: int) -> int:
    """``1*DIGIT`` (ASCII, already checked) as an int, clamped to ``limit``."""
    if len(text) > _MAX_DIGITS:
        text = text.lstrip("0") or "0"
        if len(text) > _MAX_DIGITS:
            return limit
    value = int(text)
    return value if value <= limit else limit


def digits_param(value: str | None, limit: int) -> int | None:
    """A numeric parameter's value; None when absent, empty, not ``1*DIGIT``
    or above ``limit`` (a port, a TTL, a reg-id out of range is no value)."""
    if not value or not (value.isascii() and value.isdigit()):
        return None
    number = digits_to_int(value, limit + 1)
    return None if number > limit else number


def param_value(params: Params, name: str) -> str | None:
    """The value of parameter ``name`` (case-insensitive), '' if it has none."""
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return "" if value is None else value
    return None


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def replace_param(params: Params, name: str, value: str | None) -> Params:
    """``params`` with ``name`` set to ``value`` (appended when absent)."""
    lname = name.lower()
    out = []
    found = False
    for key, old in params:
        if key.lower() == lname:
            if not found:
                out.append((key, value))
                found = True
        else:
            out.append((key, old))
    if not found:
        out.append((name, value))
    return tuple(out)


def remove_param(params: Params, name: str) -> Params:
    lname = name.lower()
    return tuple(p for p in params if p[0].lower() != lname)


def quoted_string_end(text: str, start: int) -> int:
    """Index just past the quoted string opening at ``text[start] == '"'``.

    Backslash escapes one character (RFC 3261 §25.1 quoted-pair), which may be
    any octet except CR and LF, so NUL and DEL inside a display name are legal
    (RFC 4475 §3.1.1.2 intmeth).
    """
    i = start + 1
    end = len(text)
    while i < end:
        c = text[i]
        if c == '"':
            return i + 1
        if c == "\\":
            i += 2
        else:
            i += 1
    raise ParseError("unterminated quoted string")


def unquote(text: str) -> str:
    """Content of a quoted string (quotes removed, quoted-pairs resolved)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        if "\\" not in inner:
            return inner
        out = []
        i = 0
        while i < len(inner):
            c = inner[i]
            if c == "\\" and i + 1 < len(inner):
                out.append(inner[i + 1])
                i += 2
            else:
                out.append(c)
                i += 1
        return "".join(out)
    return text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_commas(value: str) -> list[str]:
    """Split a header value at commas that separate list elements.

    Commas inside quoted strings and inside ``<...>`` belong to the element
    (RFC 3261 §7.3.1): a display name or a URI may contain them. Empty
    elements are kept so callers can reject them (RFC 4475 badinv01).
    """
    if '"' not in value and "<" not in value:
        return [part.strip(" \t") for part in value.split(",")]
    parts = []
    depth_angle = False
    start = 0
    i = 0
    end = len(value)
    while i < end:
        c = value[i]
        if c == '"' and not depth_angle:
            i = quoted_string_end(value, i)
            continue
        if c == "<":
            depth_angle = True
        elif c == ">":
            depth_angle = False
        elif c == "," and not depth_angle:
            parts.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    parts.append(value[start:].strip(" \t"))
    return parts
