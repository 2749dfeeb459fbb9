"""ZeroMQ sockets driven from trio, without threads and without busy-waiting.

pyzmq has no trio integration. A ZeroMQ socket exposes a file descriptor that
signals *changes* of its event state (edge-triggered), so the receive loop
drains with non-blocking ``recv`` until ``zmq.Again``, re-reads ``EVENTS``
(which also re-arms the descriptor) and only then waits on the descriptor
(STYLE §3).

Each node binds one PULL socket (its link endpoint, published in its
membership record) and keeps one PUSH socket per peer it sends to. PUSH
sockets use ``IMMEDIATE`` so that nothing queues towards a peer whose
connection is down: ``Outbox.send`` then returns False at once and the caller
answers or counts it (DESIGN §3: nothing disappears silently). ZeroMQ
reconnects by itself when a peer comes back on the same endpoint.
"""

from __future__ import annotations

import logging

import trio
import zmq

log = logging.getLogger("sipcluster.link")

DEFAULT_HWM = 10000
# Plain ints: the enum members make every ``&`` build a new flag object.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


class Inbox:
    """The node's bound PULL socket."""

    def __init__(self, context: zmq.Context, endpoint: str, *, hwm: int = DEFAULT_HWM) -> None:
        self.socket = context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received = 0

    async def receive_batch(self, limit: int = 512) -> list[bytes]:
        """Wait for at least one message and return up to ``limit`` of them.

        Always a checkpoint: under sustained load messages are ready at every
        call, and a loop that never yields would starve the node's other
        tasks (the etcd lease keep-alive first: the node would drop out of
        the ring exactly when it is busiest)."""
        sock = self.socket
        batch: list[bytes] = []
        waited = False
        recv, events = sock.recv, sock.getsockopt
        while True:
            # Read until zmq.Again: one raised exception per batch is cheaper
            # than asking ZMQ_EVENTS before every read (pyzmq maps the option
            # through an enum on each getsockopt).
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
            if events(_EVENTS) & _POLLIN:
                continue
            waited = True
            await trio.lowlevel.wait_readable(sock.getsockopt(zmq.FD))

    def close(self) -> None:
        self.socket.close(0)


class Outbox:
    """PUSH sockets to peers, one per peer endpoint."""

    def __init__(self, context: zmq.Context, *, hwm: int = DEFAULT_HWM) -> None:
        self.context = context
        self.hwm = hwm
        self._sockets: dict[str, zmq.Socket] = {}
        self.sent = 0
        self.undeliverable = 0

    def connect(self, endpoint: str) -> zmq.Socket:
        sock = self._sockets.get(endpoint)
        if sock is None:
            sock = self.context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.connect(endpoint)
            self._sockets[endpoint] = sock
        return sock

    def disconnect(self, endpoint: str) -> None:
        sock = self._sockets.pop(endpoint, None)
        if sock is not None:
            sock.close(0)

    def endpoints(self) -> list[str]:
        return list(self._sockets)

    def send(self, endpoint: str, data: bytes) -> bool:
        """Queue ``data`` for ``endpoint``; False when it cannot be delivered now
        (no live connection, or the high-water mark is reached)."""
        sock = self._sockets.get(endpoint) or self.connect(endpoint)
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
