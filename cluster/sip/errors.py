"""The one exception type for bad SIP input.

Following h11's habit, a protocol error carries the status code a server should
answer with, so the single inbound boundary (the worker) can turn any parse
failure into the right response per RFC 3261 §8.2.6 without a second table.
"""

from __future__ import annotations


class ParseError(ValueError):
    """Bytes that are not an acceptable SIP message.

    ``status`` is the response code a UAS or proxy should send for a request
    that fails this way (400 unless a more specific code applies: 505 for an
    unsupported SIP version, 413/513 for oversized messages, 416 for an
    unsupported URI scheme). ``reason`` is a short human-readable explanation
    suitable for a Reason-Phrase or Warning text.
    """

    __slots__ = ("status", "reason")

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"ParseError({self.reason!r}, status={self.status})"
