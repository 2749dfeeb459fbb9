"""Where a message came from or goes to, as the transaction layer sees it."""

from __future__ import annotations

from dataclasses import dataclass, field

# RFC 3261 §18: only UDP (and DTLS over it) lacks delivery guarantees; every
# other transport gets no retransmission timers and zero linger timers.
_UNRELIABLE = frozenset({"UDP", "DTLS"})


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of a hop.

    ``transport`` is upper-case (UDP, TCP, TLS, WS, WSS, SCTP). ``context`` is
    opaque to the SIP core: the runtime keeps there what it needs to reach the
    peer again (edge id, connection id); it takes no part in equality, so the
    same address seen through another connection is the same peer.
    """

    transport: str
    host: str
    port: int
    context: object = field(default=None, compare=False)

    @property
    def reliable(self) -> bool:
        return self.transport not in _UNRELIABLE
