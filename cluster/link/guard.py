"""Who may open a link to this node: the ZAP decision and its accounting.

ZeroMQ asks a ZAP handler (RFC 27/ZAP, "ZeroMQ Authentication Protocol")
about every CURVE client once its handshake has proved that the client holds
the secret half of the public key it presents. This module decides on that
key: a link accepts exactly the current members of the roles that
legitimately send to it (a worker's inbox: edges, which write ``in``
envelopes whose source address the worker believes; an edge's inbox:
workers, which write ``out`` envelopes the edge puts on the network). The
allowed keys follow the membership view the node already watches, so a node
that leaves is refused from its next connection on.

Attempts that never reach ZAP are counted here too, from the socket
monitor's events: a plaintext (NULL mechanism) client or one that sends
bytes that are no ZMTP greeting fails the handshake before any key is known.

Nothing here does I/O: ``zmq_trio.LinkAuthenticator`` feeds it ZAP requests
and monitor events with the current time. Each refusal is counted by reason
and logged, at most one line per reason every ``log_interval`` seconds (a
flood of attempts must not flood the log); a line says how many were not
logged since the last one.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable

import zmq

from cluster.sharding.membership import Member

log = logging.getLogger("sipcluster.link")

__all__ = ["HANDSHAKE", "HOLD", "LinkGuard", "UNKNOWN_KEY", "WRONG_ROLE"]

UNKNOWN_KEY = "unknown_key"
"""A CURVE client whose public key no current member publishes."""
WRONG_ROLE = "wrong_role"
"""A member's key, but of a role that never sends to this node's link."""
HANDSHAKE = "handshake"
"""No CURVE handshake at all: plaintext, another mechanism, or garbage bytes."""
REASONS = (UNKNOWN_KEY, WRONG_ROLE, HANDSHAKE)
HOLD = "<hold>"
"""``decide``: not known yet; ask again when the membership may have moved."""


class LinkGuard:
    """The allowed keys of one node's inbox and the refusals it counted.

    ``accept`` is the roles whose members may connect.
    """

    def __init__(self, accept: Iterable[str], *, log_interval: float = 10.0) -> None:
        self.accept = frozenset(accept)
        self.log_interval = log_interval
        self._allowed: dict[bytes, str] = {}
        """Z85 public key -> id of the member of an accepted role publishing it."""
        self._others: dict[bytes, str] = {}
        """Z85 public key -> role, for members of the other roles."""
        self.failures: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self.accepted = 0
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()
        # Monitor bookkeeping: connections accepted and not yet through a
        # handshake (by file descriptor, oldest first), and failed handshakes
        # whose connection has not closed yet.
        self._pending: dict[int, None] = {}
        self._failed_open = 0

    def update(self, members: Iterable[Member]) -> None:
        """Take the keys of the current members (a new membership view)."""
        allowed: dict[bytes, str] = {}
        others: dict[bytes, str] = {}
        for member in members:
            if not member.curve_key:
                continue  # a node of a release without CURVE links: not linked to
            key = member.curve_key.encode("ascii")
            if member.role in self.accept:
                allowed[key] = member.id
            else:
                others.setdefault(key, member.role)
        self._allowed, self._others = allowed, others

    def member_for(self, key: bytes) -> str | None:
        """The id of the accepted member publishing ``key`` (Z85), if any."""
        return self._allowed.get(key)

    def decide(self, mechanism: bytes, key: bytes, address: str, now: float, *,
               final: bool = True) -> str | None:
        """A ZAP request: the member id to admit as, or None (refused, counted, logged).

        ``key`` is the client's public key in Z85 text; ``address`` its
        network address as ZeroMQ reports it (empty over ipc). With
        ``final`` False an unknown key returns ``HOLD`` instead, uncounted:
        a node that has just joined connects as soon as it sees us, which
        may be before our membership watch has delivered its record."""
        if mechanism == b"CURVE":
            member = self._allowed.get(key)
            if member is not None:
                self.accepted += 1
                return member
            role = self._others.get(key)
            if role is None and not final:
                return HOLD
            reason = UNKNOWN_KEY if role is None else WRONG_ROLE
            detail = f"key {key.decode('ascii', 'replace')}" + (f" (a {role}'s)" if role else "")
        else:
            # Our sockets only speak CURVE; ZAP is not asked about NULL
            # clients of a CURVE server, but refuse anything else all the same.
            reason, detail = HANDSHAKE, f"mechanism {mechanism.decode('ascii', 'replace')}"
        self.refused(reason, f"{detail} from {address or 'a local socket'}", now)
        return None

    def refused(self, reason: str, detail: str, now: float) -> None:
        """Count one refused link connection and log it (rate-limited per reason)."""
        self.failures[reason] += 1
        last = self._logged_at.get(reason)
        if last is not None and now - last < self.log_interval:
            self._unlogged[reason] += 1
            return
        self._logged_at[reason] = now
        skipped = self._unlogged.pop(reason, 0)
        log.warning("link connection refused (%s): %s%s", reason, detail,
                    f"; {skipped} more refused since the last such line" if skipped else "",
                    extra={"reason": reason})

    def monitor_event(self, event: int, value: int, endpoint: str, now: float) -> None:
        """One event of the inbox socket's monitor.

        libzmq names the connection (its file descriptor) in ACCEPTED and
        DISCONNECTED only, not in the handshake events, so a connection
        that closes while still pending is one that failed: counted here
        unless a handshake failure event already stands for it (ZAP's
        refusals are counted by ``decide``). A success resolves the oldest
        pending connection; with handshakes overlapping in time that may
        be another one than ZeroMQ meant, which can shift a count between
        attempts but not make a refused one look accepted."""
        if event == _ACCEPTED:
            self._pending[value] = None
        elif event == _DISCONNECTED:
            if value in self._pending:
                del self._pending[value]
                if self._failed_open:
                    self._failed_open -= 1
                else:
                    self.refused(HANDSHAKE, f"a connection to {endpoint} closed before any "
                                            "handshake (not a ZeroMQ peer, or garbage)", now)
        elif event == _SUCCEEDED:
            if self._pending:
                del self._pending[next(iter(self._pending))]
        elif event == _FAILED_AUTH:
            self._failed_open += 1
        elif event in _FAILED_HANDSHAKE:
            self._failed_open += 1
            self.refused(HANDSHAKE, f"handshake on {endpoint} failed ({_error_name(event, value)}): "
                                    "a client without CURVE, or garbage", now)


def _error_name(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        # The value is a ZMTP protocol error code (zmq.Event.PROTOCOL_ERROR_*).
        names = [name for name, member in zmq.Event.__members__.items()
                 if name.startswith("PROTOCOL_ERROR_") and member.value == value]
        return names[0] if names else hex(value)
    return os.strerror(value) if value else "no detail"


_ACCEPTED, _DISCONNECTED = int(zmq.EVENT_ACCEPTED), int(zmq.EVENT_DISCONNECTED)
_SUCCEEDED, _FAILED_AUTH = int(zmq.EVENT_HANDSHAKE_SUCCEEDED), int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_FAILED_HANDSHAKE = frozenset((int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL),
                               int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)))
MONITORED = (_ACCEPTED | _DISCONNECTED | _SUCCEEDED | _FAILED_AUTH
             | int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL) | int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL))
"""The monitor events ``monitor_event`` reads."""
