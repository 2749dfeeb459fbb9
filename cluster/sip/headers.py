"""Header field names: compact forms, canonical spelling, list-valued fields.

Header names compare case-insensitively (RFC 3261 §7.3.1) and have compact
forms (§7.3.3, plus those registered later). Internally every header is keyed
by its lowercase long name; serialising a new or modified header uses the
canonical spelling below.
"""

from __future__ import annotations

from .errors import ParseError
from .grammar import is_token

# RFC 3261 §7.3.3 and the IANA "Header Fields" registry's compact forms.
COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

CANONICAL_NAMES = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info",
        "Allow", "Allow-Events", "Authentication-Info", "Authorization", "Call-ID",
        "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
        "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date",
        "Error-Info", "Event", "Expires", "From", "Identity", "Identity-Info",
        "In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version", "Organization",
        "Path", "Priority", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To", "Referred-By",
        "Reject-Contact", "Reply-To", "Request-Disposition", "Require", "Retry-After",
        "Route", "RSeq", "Server", "Service-Route", "Session-Expires", "Subject",
        "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning",
        "WWW-Authenticate", "Min-SE", "P-Asserted-Identity", "Privacy", "Flow-Timer",
    )
}

# Fields whose grammar is a comma-separated list (RFC 3261 §7.3.1: only these
# may be split or combined). Authorization-like fields are NOT lists: their
# commas separate digest parameters of one credential.
LIST_HEADERS = frozenset({
    "via", "contact", "route", "record-route", "path", "service-route",
    "allow", "supported", "require", "proxy-require", "unsupported",
    "accept", "accept-encoding", "accept-language", "allow-events",
    "content-encoding", "content-language", "in-reply-to", "alert-info",
    "call-info", "error-info", "warning", "reply-to", "p-asserted-identity",
    "accept-contact", "reject-contact", "request-disposition", "reason",
})

# Fields that may appear at most once (RFC 3261 §20 and §7.3.1: a field that
# is not a list must not repeat). Repeating these is a malformed message
# (RFC 4475 §3.1.2.16 multi01).
SINGLE_HEADERS = frozenset({
    "call-id", "cseq", "from", "to", "max-forwards", "content-length",
    "content-type", "expires", "min-expires", "date",
})

# Only names that passed the token check are cached: the parser relies on a
# cache miss to notice continuation lines, which start with whitespace.
_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_LIMIT = 4096
_KEY_NAME_LIMIT = 64
"""Longest header name cached: the table stays under 4096 x 64 characters."""


def header_key(name: str) -> str:
    """The lowercase long form of a header name; ParseError if not a token."""
    key = _KEY_CACHE.get(name)
    if key is not None:
        return key
    if not is_token(name):
        raise ParseError(f"invalid header name {name[:40]!r}")
    lower = name.lower()
    key = COMPACT_FORMS.get(lower, lower)
    if len(_KEY_CACHE) < _KEY_CACHE_LIMIT and len(name) <= _KEY_NAME_LIMIT:
        _KEY_CACHE[name] = key
    return key


def canonical_name(key: str) -> str:
    """Spelling used when we write a header ourselves."""
    name = CANONICAL_NAMES.get(key)
    if name is None:
        name = "-".join(part.capitalize() for part in key.split("-"))
    return name
