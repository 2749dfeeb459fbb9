"""name-addr / addr-spec fields: From, To, Contact, Route, Record-Route, Path.

RFC 3261 §20.10 and §25.1. In the addr-spec form (no angle brackets) the URI
cannot carry parameters or headers of its own: everything after the first
';' belongs to the header field, and a '?' or ',' there is malformed
(RFC 4475 §3.1.2.11 regbadct).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import ParseError
from .memo import MemoTable, remember
from .grammar import (
    Params, digits_param, digits_to_int, format_params, is_token_words, param_value, parse_params,
    quote, quoted_string_end, remove_param, replace_param, unquote,
)
from .uri import URI, parse_uri


@dataclass(frozen=True, slots=True)
class NameAddress:
    uri: URI
    display_name: str | None = None
    params: Params = ()
    # True when written as <uri>: needed to serialise URIs with parameters.
    bracketed: bool = True

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    @property
    def tag(self) -> str | None:
        return param_value(self.params, "tag")

    @property
    def expires(self) -> int | None:
        value = param_value(self.params, "expires")
        if value is None or not (value.isascii() and value.isdigit()):
            return None
        return digits_to_int(value, 0xFFFFFFFF)

    @property
    def q(self) -> float | None:
        value = param_value(self.params, "q")
        if not value:
            return None
        try:
            q = float(value)
        except ValueError:
            return None
        return q if 0.0 <= q <= 1.0 else None

    @property
    def instance(self) -> str | None:
        """RFC 5626 §4.1 ``+sip.instance``, without its quotes and angle brackets."""
        value = param_value(self.params, "+sip.instance")
        if value is None:
            return None
        return unquote(value).strip("<>")

    @property
    def reg_id(self) -> int | None:
        # RFC 5626 §4.2: reg-id is 1 to 2**31 - 1.
        return digits_param(param_value(self.params, "reg-id"), 0x7FFFFFFF)

    def with_param(self, name: str, value: str | None) -> NameAddress:
        return replace(self, params=replace_param(self.params, name, value))

    def without_param(self, name: str) -> NameAddress:
        return replace(self, params=remove_param(self.params, name))

    def __str__(self) -> str:
        if self.display_name is not None:
            head = f"{quote(self.display_name)} <{self.uri}>"
        else:
            head = f"<{self.uri}>"
        return head + format_params(self.params)


class _NameAddressDraft:
    """Writable twin of NameAddress (same slots), for the parser's hot path:
    a frozen dataclass's __init__ pays object.__setattr__ per field; a
    draft is filled with plain slot stores and retyped, which CPython
    allows between classes of identical layout."""

    __slots__ = NameAddress.__slots__
    # Declared for the type checker only: no values, so no class attributes.
    uri: URI
    display_name: str | None
    params: Params
    bracketed: bool


# The common shape, ``["display" | token words] <uri> params``, in one match.
# Anything unusual (unbalanced quotes, spaces in the URI, addr-spec form)
# falls through to the careful parser below, which gives the precise error.
# The display name's words start with a token character, so the leading
# whitespace and the words cannot trade characters: with a lazy words group
# followed by more whitespace, a long run of spaces without a '<' made the
# match quadratic (seconds for 32 KB).
_FAST_RE = re.compile(
    '[ \\t]*(?:"((?:[^"\\\\]|\\\\.)*)"[ \\t]*|([A-Za-z0-9\\-.!%*_+`\'~][A-Za-z0-9\\-.!%*_+`\'~ \\t]*)?)'
    '<([^<>"\\s]+)>'
)


_MEMO: MemoTable[NameAddress] = MemoTable()


def parse_name_addr(value: str, *, brackets_required: bool = False) -> NameAddress:
    """Parse ``( name-addr / addr-spec ) *( SEMI param )``."""
    # Only <bracketed> values parsed on the fast path are remembered, and for
    # those brackets_required makes no difference.
    address = _MEMO.get(value)
    if address is not None:
        return address
    m = _FAST_RE.match(value)
    if m is not None:
        quoted, words, uri_text = m.groups()
        if quoted is not None:
            display: str | None = unquote(f'"{quoted}"') if "\\" in quoted else quoted
        else:
            display = words.rstrip(" \t") if words else None
            if display is not None and not is_token_words(display):
                display = None
                m = None
        if m is not None:
            end = m.end()
            params = parse_params(value, end) if end < len(value) else ()
            draft = _NameAddressDraft()
            draft.uri = parse_uri(uri_text)
            draft.display_name = display
            draft.params = params
            draft.bracketed = True
            # Retyped in place (identical slots): the type checker cannot follow.
            draft.__class__ = NameAddress  # type: ignore[assignment]
            parsed: NameAddress = draft  # type: ignore[assignment]
            return remember(_MEMO, value, parsed)
    return _parse_name_addr_careful(value, brackets_required)


def _parse_name_addr_careful(value: str, brackets_required: bool) -> NameAddress:
    s = value.strip(" \t")
    if not s:
        raise ParseError("empty address")
    display: str | None = None
    if s[0] == '"':
        close = quoted_string_end(s, 0)
        display = unquote(s[:close])
        s = s[close:].lstrip(" \t")
        if not s.startswith("<"):
            raise ParseError("display name not followed by <URI>")
        lt = 0
    else:
        lt = s.find("<")
    if lt >= 0:
        if display is None:
            words = s[:lt].strip(" \t")
            if words:
                # RFC 4475 §3.1.2.19 baddn: unquoted names must be tokens.
                if not is_token_words(words):
                    raise ParseError("display name must be quoted")
                display = words
        gt = s.find(">", lt)
        if gt < 0:
            raise ParseError("missing '>' in address")
        uri = parse_uri(s[lt + 1:gt])
        params = parse_params(s, gt + 1) if gt + 1 < len(s) else ()
        return NameAddress(uri, display, params, True)
    if brackets_required:
        raise ParseError("address must be in <URI> form")
    semi = s.find(";")
    spec = s if semi < 0 else s[:semi]
    spec = spec.rstrip(" \t")
    if "?" in spec or "," in spec:
        raise ParseError("addr-spec with headers or commas must be in <URI> form")
    uri = parse_uri(spec)
    params = parse_params(s, semi) if semi >= 0 else ()
    return NameAddress(uri, None, params, False)
