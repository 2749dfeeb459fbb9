"""Small structured header fields: CSeq, Retry-After, option-tag lists, Date.

Each parser takes the field value (LWS already unfolded) and returns a frozen
value or raises ParseError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ParseError
from .memo import MemoTable, remember
from .grammar import TOKEN_CHARS, Params, digits_param, digits_to_int, param_value, parse_params

# RFC 3261 §8.1.1.5: the sequence number is a 32-bit unsigned integer.
MAX_CSEQ = 0xFFFFFFFF
MAX_CONTENT_LENGTH = 1 << 62

_CSEQ_RE = re.compile(f"[ \\t]*([0-9]{{1,10}})[ \\t]+([{TOKEN_CHARS}]+)[ \\t]*\\Z")
_RETRY_AFTER_RE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*(\([^)]*\))?[ \t]*")
# RFC 3261 §25.1 rfc1123-date; only "GMT" is allowed (RFC 4475 §3.1.2.10 baddate).
_DATE_RE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT\Z"
)


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


class _CSeqDraft:
    """Writable twin of CSeq (same slots); see via._ViaDraft for why."""

    __slots__ = CSeq.__slots__
    seq: int  # declared for the type checker only: no class attributes
    method: str


_CSEQ_MEMO: MemoTable[CSeq] = MemoTable()


def parse_cseq(value: str) -> CSeq:
    cseq = _CSEQ_MEMO.get(value)
    if cseq is not None:
        return cseq
    m = _CSEQ_RE.match(value)
    if m is None:
        raise ParseError(f"malformed CSeq {value[:40]!r}")
    seq = int(m.group(1))
    if seq > MAX_CSEQ:
        # RFC 4475 §3.1.2.4 scalar02 / §3.1.2.5 scalarlg.
        raise ParseError("CSeq number out of range")
    draft = _CSeqDraft()
    draft.seq = seq
    draft.method = m.group(2)
    # Retyped in place (identical slots): the type checker cannot follow.
    draft.__class__ = CSeq  # type: ignore[assignment]
    parsed: CSeq = draft  # type: ignore[assignment]
    return remember(_CSEQ_MEMO, value, parsed)


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """RFC 3261 §20.33."""

    seconds: int
    comment: str | None = None
    params: Params = ()

    @property
    def duration(self) -> int | None:
        return digits_param(param_value(self.params, "duration"), MAX_CSEQ)

    def __str__(self) -> str:
        text = str(self.seconds)
        if self.comment:
            text += f" {self.comment}"
        return text + "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)


def parse_retry_after(value: str) -> RetryAfter:
    m = _RETRY_AFTER_RE.match(value)
    if m is None:
        raise ParseError("malformed Retry-After")
    seconds = int(m.group(1))
    if seconds > MAX_CSEQ:
        raise ParseError("Retry-After out of range")
    params = parse_params(value, m.end()) if m.end() < len(value) else ()
    return RetryAfter(seconds, m.group(2), params)


def parse_max_forwards(value: str) -> int:
    """RFC 3261 §20.22: 1*DIGIT; values past 255 are read as 255."""
    text = value.strip(" \t")
    if not (text.isascii() and text.isdigit()):
        raise ParseError("malformed Max-Forwards")
    return digits_to_int(text, 255)


def parse_content_length(value: str) -> int:
    """RFC 3261 §20.14: 1*DIGIT."""
    text = value.strip(" \t")
    if not (text.isascii() and text.isdigit()):
        raise ParseError("malformed Content-Length")
    # Clamped far past any message size: the caller rejects it as too large.
    return digits_to_int(text, MAX_CONTENT_LENGTH)


def parse_delta_seconds(value: str, field: str) -> int:
    """Expires / Min-Expires: delta-seconds, values past 2**32-1 clamp to it."""
    text = value.strip(" \t")
    if not (text.isascii() and text.isdigit()):
        raise ParseError(f"malformed {field}")
    return digits_to_int(text, MAX_CSEQ)


def check_date(value: str) -> None:
    if _DATE_RE.match(value.strip(" \t")) is None:
        raise ParseError("malformed Date (RFC 1123 form in GMT required)")
