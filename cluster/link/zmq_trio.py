"""ZeroMQ sockets driven from trio, without threads and without busy-waiting.

pyzmq has no trio integration. A ZeroMQ socket exposes a file descriptor that
signals *changes* of its event state (edge-triggered), so the receive loop
drains with non-blocking ``recv`` until ``zmq.Again`` and only then waits on
the descriptor (STYLE §3). A non-blocking ``recv`` that finds no message
processes the socket's pending commands before it answers ``Again`` (libzmq
``socket_base_t::recv``), which is what re-arms the descriptor: asking
``EVENTS`` after it would cost one more ``poll`` of the socket's mailbox per
wake-up and learn nothing (issue 21: at moderate load the cost is per
wake-up). The monitor and ZAP loops, off the message path, still ask
``EVENTS`` before they wait (``_wait_readable``).

Each node binds one PULL socket (its link endpoint, published in its
membership record) and keeps one PUSH socket per peer it sends to. PUSH
sockets use ``IMMEDIATE`` so that nothing queues towards a peer whose
connection is down: ``Outbox.send`` then returns False at once and the caller
answers or counts it (DESIGN §3: nothing disappears silently). ZeroMQ
reconnects by itself when a peer comes back on the same endpoint.

With ``keys`` (``cluster.link.keys``; every node passes them) the links are
CurveZMQ (RFC 26/CurveZMQ): the PULL socket is a CURVE server and each PUSH
socket a CURVE client given its peer's published public key, so links are
encrypted and each end knows the other's key. Which keys may connect is
decided by ``LinkAuthenticator``, the node's ZAP handler (RFC 27/ZAP), from
the membership (``cluster.link.guard``).
"""

from __future__ import annotations

import logging
import math

import trio
import zmq
from zmq.utils.monitor import parse_monitor_message
from zmq.utils.z85 import encode as z85_encode

from .guard import HOLD, MONITORED, LinkGuard
from .keys import LinkKeys

log = logging.getLogger("sipcluster.link")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
"""Where libzmq asks for authentication decisions, one handler per context."""
ZAP_DOMAIN = b"sipcluster-link"

_CONTEXTS: list[zmq.Context] = []


def node_context() -> zmq.Context:
    """A ZeroMQ context for one node: libzmq asks one ZAP handler per
    context, so nodes sharing a process (tests) cannot share one. It lives
    as long as the process: a context collected in the same garbage cycle
    as its sockets would be terminated before they are closed (weak
    references die first), and termination then waits forever."""
    context = zmq.Context()
    _CONTEXTS.append(context)
    return context

DEFAULT_HWM = 10000
HEARTBEAT_IVL_MS = 250
"""ZMTP 3.1 PING interval on outgoing links."""
HEARTBEAT_TIMEOUT_MS = 1000
"""A link whose peer sent nothing (not even a PONG) this long is closed: a
stalled peer process (SIGSTOP, a frozen VM) is noticed within a second, as
a killed one is at once by its connections' reset (DESIGN §4)."""
# Plain ints: the enum members make every ``&`` build a new flag object.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


class Inbox:
    """The node's bound PULL socket."""

    def __init__(self, context: zmq.Context, endpoint: str, *, hwm: int = DEFAULT_HWM,
                 keys: LinkKeys | None = None) -> None:
        self.socket = context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            self.socket.setsockopt(zmq.CURVE_SERVER, 1)
            self.socket.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
            self.socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            self.socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
            # Without a ZAP handler in the context libzmq would admit every
            # CURVE client; enforcing the domain makes it refuse them instead.
            self.socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.fd: int = self.socket.fileno()
        """ZMQ_FD: the same descriptor for the socket's lifetime."""
        self.received = 0

    async def receive_batch(self, limit: int = 512) -> list[bytes]:
        """Wait for at least one message and return up to ``limit`` of them.

        Always a checkpoint: under sustained load messages are ready at every
        call, and a loop that never yields would starve the node's other
        tasks (the etcd lease keep-alive first: the node would drop out of
        the ring exactly when it is busiest)."""
        batch: list[bytes] = []
        waited = False
        recv = self.socket.recv
        while True:
            # Read until zmq.Again: one raised exception per batch is cheaper
            # than asking ZMQ_EVENTS before every read (pyzmq maps the option
            # through an enum on each getsockopt), and the Again itself
            # re-armed the descriptor (module doc).
            try:
                while len(batch) < limit:
                    batch.append(recv(_NOBLOCK))
            except zmq.Again:
                pass
            if batch:
                self.received += len(batch)
                if not waited:
                    await trio.lowlevel.checkpoint()
                return batch
            waited = True
            await trio.lowlevel.wait_readable(self.fd)

    def close(self) -> None:
        self.socket.close(0)


class Outbox:
    """PUSH sockets to peers, one per peer endpoint."""

    def __init__(self, context: zmq.Context, *, hwm: int = DEFAULT_HWM,
                 keys: LinkKeys | None = None, watch: LinkWatch | None = None) -> None:
        """``watch`` is told of each socket, to follow its link's state."""
        self.context = context
        self.hwm = hwm
        self.keys = keys
        self.watch = watch
        self._sockets: dict[str, zmq.Socket] = {}
        self._server_keys: dict[str, bytes | None] = {}
        self.sent = 0
        self.undeliverable = 0

    def connect(self, endpoint: str, server_key: bytes | None = None) -> zmq.Socket:
        """The PUSH socket to ``endpoint``; with ``keys``, ``server_key`` is
        the peer's published public key (Z85), and a peer that comes back
        under the same endpoint with another key gets a new socket."""
        if self.keys is not None and server_key is None:
            raise ValueError(f"CURVE link to {endpoint} needs the peer's public key")
        sock = self._sockets.get(endpoint)
        if sock is not None and self._server_keys.get(endpoint) != server_key:
            self.disconnect(endpoint)
            sock = None
        if sock is None:
            sock = self.context.socket(zmq.PUSH)
            if self.keys is not None:
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            if self.watch is not None:
                self.watch.add(endpoint, sock)
            sock.connect(endpoint)
            self._sockets[endpoint] = sock
            self._server_keys[endpoint] = server_key
        return sock

    def disconnect(self, endpoint: str) -> None:
        self._server_keys.pop(endpoint, None)
        sock = self._sockets.pop(endpoint, None)
        if sock is not None:
            if self.watch is not None:
                self.watch.remove(endpoint)
            sock.close(0)

    def endpoints(self) -> list[str]:
        return list(self._sockets)

    def send(self, endpoint: str, data: bytes) -> bool:
        """Queue ``data`` for ``endpoint``; False when it cannot be delivered now
        (no live connection, or the high-water mark is reached)."""
        sock = self._sockets.get(endpoint)
        if sock is None:
            if self.keys is not None:
                # No published key known for it: not a member we link to.
                self.undeliverable += 1
                return False
            sock = self.connect(endpoint)
        try:
            sock.send(data, _NOBLOCK)
        except zmq.Again:
            self.undeliverable += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close(0)
        self._sockets.clear()
        self._server_keys.clear()


_LINK_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class LinkWatch:
    """Follows the outgoing links of an ``Outbox`` through ZeroMQ socket
    monitors: ``run(on_event)`` calls ``on_event(endpoint, up)`` when a
    link completes its handshake (up) or loses its connection (down: the
    peer died, closed, or missed its heartbeats)."""

    def __init__(self) -> None:
        self._new: tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel] = \
            trio.open_memory_channel(math.inf)
        self._scopes: dict[str, trio.CancelScope] = {}

    def add(self, endpoint: str, sock: zmq.Socket) -> None:
        self.remove(endpoint)
        monitor = sock.get_monitor_socket(_LINK_EVENTS)
        monitor.setsockopt(zmq.LINGER, 0)
        scope = self._scopes[endpoint] = trio.CancelScope()
        self._new[0].send_nowait((endpoint, monitor, scope))

    def remove(self, endpoint: str) -> None:
        scope = self._scopes.pop(endpoint, None)
        if scope is not None:
            scope.cancel()

    async def run(self, on_event, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for endpoint, monitor, scope in self._new[1]:
                nursery.start_soon(self._follow, endpoint, monitor, scope, on_event)

    @staticmethod
    async def _follow(endpoint: str, monitor: zmq.Socket, scope: trio.CancelScope, on_event) -> None:
        def handle(event: dict) -> None:
            kind = int(event["event"])
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                on_event(endpoint, True)
            elif kind == zmq.EVENT_DISCONNECTED:
                on_event(endpoint, False)

        try:
            with scope:
                await _follow_monitor(monitor, handle)
        finally:
            monitor.close(0)


async def _follow_monitor(monitor: zmq.Socket, handle) -> None:
    """Hand each event ``monitor`` reports to ``handle``, forever."""
    while True:
        await _wait_readable(monitor)
        while True:
            try:
                message = monitor.recv_multipart(_NOBLOCK)
            except zmq.Again:
                break
            handle(parse_monitor_message(message))
        await trio.lowlevel.checkpoint()


async def _wait_readable(sock: zmq.Socket) -> None:
    """Until ``sock`` has a message (edge-triggered descriptor: see the module doc)."""
    # getsockopt is typed int | bytes for any option; ZMQ_EVENTS is an int.
    while not sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
        await trio.lowlevel.wait_readable(sock.fileno())  # fileno() is ZMQ_FD


class LinkAuthenticator:
    """The node's ZAP handler and the monitor of its inbox, on trio.

    Bind it before the inbox (the constructor binds the ZAP socket), so that
    no handshake can find the context without a handler; ``run`` answers
    the requests queued meanwhile. One per ZeroMQ context.

    A key no member publishes is held up to ``hold`` seconds and asked
    about again as the membership moves: libzmq does not reconnect after a
    refusal, so refusing a member that joined a moment ago (our watch has
    not delivered its record yet) would cut its link for good. At most
    ``MAX_HELD`` requests wait; beyond that a stranger is refused at once.
    """

    MAX_HELD = 256

    def __init__(self, context: zmq.Context, guard: LinkGuard, *, hold: float = 5.0) -> None:
        self.guard = guard
        self.hold = hold
        # A ROUTER rather than the usual REP: answers may leave out of order.
        self.zap = context.socket(zmq.ROUTER)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self._monitors: list[zmq.Socket] = []
        self._held: list[tuple[float, list[bytes]]] = []

    def watch(self, inbox: Inbox) -> None:
        """Count the handshakes of ``inbox`` that never reach ZAP."""
        monitor = inbox.socket.get_monitor_socket(MONITORED)
        monitor.setsockopt(zmq.LINGER, 0)
        self._monitors.append(monitor)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._answer)
            for monitor in self._monitors:
                nursery.start_soon(self._follow, monitor)
            task_status.started()

    async def _answer(self) -> None:
        zap = self.zap
        while True:
            # Held requests are asked about again every quarter second.
            with trio.move_on_after(0.25 if self._held else math.inf):
                await _wait_readable(zap)
            now = trio.current_time()
            held, self._held = self._held, []
            for since, request in held:
                self._handle(request, now, final=now - since >= self.hold, since=since)
            while True:
                try:
                    request = zap.recv_multipart(_NOBLOCK)
                except zmq.Again:
                    break
                self._handle(request, now, final=len(self._held) >= self.MAX_HELD, since=now)
            await trio.lowlevel.checkpoint()

    def _handle(self, request: list[bytes], now: float, *, final: bool, since: float) -> None:
        # ROUTER envelope (peer id, empty delimiter), then RFC 27: version,
        # request id, domain, address, identity, mechanism, credentials
        # (CURVE: the client's 32-byte public key).
        if len(request) < 8:
            if len(request) >= 4:
                self.zap.send_multipart([*request[:2], b"1.0", request[3], b"500",
                                         b"malformed request", b"", b""])
            return
        route, request_id, address, mechanism = request[:2], request[3], request[5], request[7]
        key = z85_encode(request[8]) if mechanism == b"CURVE" and len(request) > 8 \
            and len(request[8]) == 32 else b""
        member = self.guard.decide(mechanism, key, address.decode("ascii", "replace"), now,
                                   final=final)
        if member == HOLD:
            self._held.append((since, request))
        elif member is None:
            self.zap.send_multipart([*route, b"1.0", request_id, b"400", b"not a member", b"", b""])
        else:
            self.zap.send_multipart([*route, b"1.0", request_id, b"200", b"OK", member.encode(), b""])

    async def _follow(self, monitor: zmq.Socket) -> None:
        guard = self.guard

        def handle(event: dict) -> None:
            guard.monitor_event(int(event["event"]), int(event["value"]),
                                event["endpoint"].decode("utf-8", "replace"), trio.current_time())

        await _follow_monitor(monitor, handle)

    def close(self) -> None:
        for sock in (self.zap, *self._monitors):
            sock.close(0)
        self._monitors.clear()
