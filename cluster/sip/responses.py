"""Building responses the way a UAS must (RFC 3261 §8.2.6).

``make_response`` answers a parsed request. ``reject_malformed`` answers bytes
that failed to parse: it recovers the fields §8.2.6.2 needs with a lenient
line scan, so even a broken request gets its 400 (with the reason), while a
broken response or plain garbage gets nothing (RFC 4475 §3: responses are
dropped).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from .errors import ParseError
from .headers import header_key
from .message import SIP_VERSION, Request, Response

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 430: "Flow Failed",
    433: "Anonymity Disallowed", 439: "First Hop Lacks Outbound Support",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status) or REASON_PHRASES.get(status // 100 * 100, "Unknown")


def local_tag(*parts: str) -> str:
    """A To tag derived from the request, so a retransmitted request gets an
    identical response from any shard without shared state (§8.2.6.2 only
    asks for global uniqueness, which the inputs already give)."""
    digest = hashlib.blake2s("\x00".join(parts).encode("utf-8", "surrogateescape"), digest_size=8)
    return digest.hexdigest()


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6.2.

    From, Call-ID, CSeq and every Via are copied in order; the To gets a tag
    unless it has one (or this is a 100, §8.2.6.1, which also copies
    Timestamp). Record-Route is copied into responses that can establish a
    dialog (§12.1.1).
    """
    response = Response(status, reason if reason is not None else reason_phrase(status))
    add = response.headers.append
    from .message import Header  # local import keeps the module graph acyclic
    for h in request.headers:
        key = h.key
        if key == "via" or key == "from" or key == "call-id" or key == "cseq":
            add(Header(key, h.name, h.value, h.raw))
        elif key == "to":
            if status == 100 or request.to.tag is not None:
                add(Header(key, h.name, h.value, h.raw))
            else:
                tag = to_tag or local_tag(
                    request.call_id, request.from_.tag or "", request.via.branch or "",
                    str(request.cseq.seq),
                )
                add(Header(key, h.name, f"{h.value};tag={tag}"))
        elif key == "timestamp" and status == 100:
            add(Header(key, h.name, h.value, h.raw))
        elif key == "record-route" and 100 < status < 300 and request.method in ("INVITE", "SUBSCRIBE", "REFER", "NOTIFY"):
            add(Header(key, h.name, h.value, h.raw))
    # The copied fields are the request's, already parsed: share the values
    # so the transaction layer does not parse them again (§17.2.3 matching).
    cache = response._cache
    source = request._cache
    for key in ("call-id", "cseq", "from", "via", "via:top"):
        value = source.get(key)
        if value is not None:
            cache[key] = value
    for name, value in headers:
        response.add(name, value)
    response.body = body
    return response


# Lenient recovery of the fields a response needs, from bytes that failed to
# parse. Each line is taken as-is; nothing here may raise.
_LINE_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:[ \t]*(.*)")
_NEEDED = ("via", "from", "to", "call-id", "cseq")


def reject_malformed(
    data: bytes,
    error: ParseError,
    *,
    server: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes | None:
    """The error response for a request that failed to parse (or that cannot
    be served: a 503 from an edge with no reachable worker), or None.

    None means: drop silently — the bytes are a response (RFC 3261 §18.1.2 /
    RFC 4475: malformed responses are discarded), garbage without a request
    line, or lack the Via/Call-ID/CSeq/From/To needed to route an answer.
    """
    text = data.lstrip(b"\r\n")
    cut = text.find(b"\r\n\r\n")
    head = (text if cut < 0 else text[:cut]).decode("utf-8", "replace")
    lines = head.split("\r\n")
    start = lines[0].split(" ")
    if len(start) < 2 or start[0].upper().startswith("SIP/") or not re.fullmatch(
        r"[A-Za-z0-9\-.!%*_+`'~]+", start[0]
    ):
        return None
    method = start[0]
    if method == "ACK":
        return None  # §17.2.1: ACK is never answered.
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line[:1] in (" ", "\t") or not line:
            continue
        m = _LINE_RE.match(line)
        if m is None:
            continue
        try:
            key = header_key(m.group(1))
        except ParseError:
            continue
        if key in _NEEDED:
            found.setdefault(key, []).append(m.group(2).strip(" \t"))
    if any(k not in found for k in _NEEDED):
        return None
    to = found["to"][0]
    if ";tag=" not in to.replace(" ", ""):
        to = f"{to};tag={local_tag(found['call-id'][0], found['cseq'][0], found['via'][0])}"
    status = error.status
    reason = reason_phrase(status)
    out = [f"{SIP_VERSION} {status} {reason}"]
    out.extend(f"Via: {v}" for v in found["via"])
    out.append(f"From: {found['from'][0]}")
    out.append(f"To: {to}")
    out.append(f"Call-ID: {found['call-id'][0]}")
    out.append(f"CSeq: {found['cseq'][0]}")
    # RFC 3261 §20.43: the Warning text says what was wrong (code 399: misc).
    detail = error.reason.replace("\\", "").replace('"', "'")
    out.append(f'Warning: 399 {server or "sipcluster"} "{detail}"')
    if server:
        out.append(f"Server: {server}")
    out.extend(f"{name}: {value}" for name, value in headers)
    out.append("Content-Length: 0")
    return ("\r\n".join(out) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def answer_internal_error(message: Request | Response, *, server: str | None = None) -> bytes | None:
    """The 500 for a request whose handling met a bug (§21.5.1), so the
    caller is answered instead of retransmitting into the same bug until its
    Timer B/F fires; None for a response or an ACK (never answered, §17.2.1)
    or when no answer can be built."""
    if type(message) is not Request or message.method == "ACK":
        return None
    try:
        headers = (("Server", server),) if server else ()
        return make_response(message, 500, headers=headers).to_bytes()
    except Exception:  # noqa: BLE001 - the request that met one bug may hold another
        return None
