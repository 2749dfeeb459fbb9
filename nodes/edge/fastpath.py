"""The UDP listener's compiled path: what the C drain needs from the edge.

``cluster.speedups.edge.Drain`` (cluster/speedups/_edge.c) reads datagrams
with ``recvmmsg`` and, for each one it can route exactly as
``Forwarder.ingress`` would, writes its version-2 envelope into the owning
worker's frame buffer without making a Python object. This module gives it
the routing state as a table (``CompiledPath.prepare``) and lets the Python
path share its frame buffers (``CompiledFrames``): a datagram the C code
hands back goes through ``Forwarder.ingress`` with these frames, so what one
drain sends a worker stays in arrival order, whichever path read each one.

The table is rebuilt when what it was built from changes (the ring, the
links, the edge's etcd view, the advertised address); the C path is off for
a drain while anything it does not model is in play: an admission level
above 0, a ban in force, a Call-ID pinned or a worker routed around (every
datagram then takes the Python path, the reference).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

import msgpack

from cluster.link import Envelope, FrameQueue, pack_v2, unpack_frame
from cluster.sip import extract_call_id

from .forwarder import Forwarder

Address = tuple[str, int]
_SPACE = 1 << 64
_packb = msgpack.Packer(use_bin_type=True).pack


class _Queued:
    """The tags of one frame from the C buffers, for ``Forwarder.flush``:
    its length costs nothing, and only a refused frame (a dead or full
    link) is decoded to give each envelope's (data, source, env, call_id),
    the tag ``Forwarder.ingress`` queues with an envelope."""

    __slots__ = ("frame", "count")

    def __init__(self, frame: bytes, count: int) -> None:
        self.frame = frame
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[bytes, Address, Envelope, bytes]]:
        for env in unpack_frame(self.frame):
            yield env.data, env.peer, env, extract_call_id(env.data)


class CompiledFrames(FrameQueue):
    """A FrameQueue whose envelopes for the table's endpoints are kept in
    the C drain's buffers, in arrival order with those it routes itself."""

    __slots__ = ("drain", "endpoints", "_index")

    def __init__(self, drain: Any) -> None:
        super().__init__()
        self.drain = drain
        self.endpoints: tuple[str, ...] = ()
        self._index: dict[str, int] = {}

    def use(self, endpoints: tuple[str, ...]) -> None:
        """The buffers are now these endpoints' (the drain's table changed)."""
        self.endpoints = endpoints
        self._index = {endpoint: i for i, endpoint in enumerate(endpoints)}

    def __bool__(self) -> bool:
        return bool(self.drain.pending()) or super().__bool__()

    def add(self, endpoint: str, env: Envelope, tag: object = None) -> None:
        index = self._index.get(endpoint)
        if index is None:
            super().add(endpoint, env, tag)
        else:
            # The tag is rebuilt from the frame if it is refused (_Queued).
            self.drain.append(index, pack_v2(env))

    def take(self) -> list[tuple[str, bytes, Any]]:
        taken: list[tuple[str, bytes, Any]] = []
        for index, endpoint in enumerate(self.endpoints):
            frame = self.drain.take(index)
            if frame is not None:
                taken.append((endpoint, frame[0], _Queued(frame[0], frame[1])))
        taken.extend(super().take())
        return taken


class CompiledPath:
    """One UDP socket's C drain and the table it routes with."""

    def __init__(self, module: Any, fd: int, forwarder: Forwarder, local: Address, *, slots: int) -> None:
        self.forwarder = forwarder
        self.local = local
        self.drain = module.Drain(fd, forwarder.max_message, slots)
        self.frames = CompiledFrames(self.drain)
        guard = forwarder.guard
        # Fixed for the forwarder's life: the guard's rate limiting (requests
        # go to Python while it is on: its buckets live there) and scanners.
        self._requests = guard is None or guard.rates is None
        scanners = guard.scanners if guard is not None and guard.scanners else None
        self._tokens = [t.lower().encode() for t in scanners.tokens] if scanners is not None else []
        self._built: tuple[object, ...] | None = None
        self._usable = False

    def prepare(self) -> bool:
        """Whether the next datagrams may take the C path; rebuilds the
        table first if its sources changed. Call with the frames empty."""
        forwarder = self.forwarder
        router = forwarder.router
        ring = router.effective
        if ring is None or not router.by_ring:
            return False
        admission = forwarder.admission
        if admission is not None and admission.level:
            return False
        guard = forwarder.guard
        if guard is not None and len(guard.bans):
            return False
        tracing = forwarder.tracing
        bound = tracing.bound if tracing is not None else None
        if bound is not None and bound >= _SPACE:
            return False  # every call sampled: each one is Python's
        key = (ring, forwarder.worker_links, forwarder.array_links, forwarder.current,
               forwarder.advertise.get("UDP"), tuple(router.suspects), bound)
        if key != self._built:
            self._configure(bound)
            self._built = key
        return self._usable

    def _configure(self, bound: int | None) -> None:
        forwarder = self.forwarder
        ring = forwarder.router.effective
        assert ring is not None  # prepare checked
        links = forwarder.worker_links
        suspects = forwarder.router.suspects
        endpoints = tuple(sorted({e for e in links.values() if e in forwarder.array_links}))
        index = {endpoint: i for i, endpoint in enumerate(endpoints)}
        points, owners = ring.placement()
        owner_index = [index.get(links.get(owner, ""), -1) for owner in owners]
        if owner_index:
            owner_index.append(owner_index[0])  # a position past the last point wraps
        # A response's wk= names its worker: only a member's link that is not
        # suspect (Forwarder.ingress); any other name is the Python path's.
        names = [w for w in links if w not in suspects and links[w] in index]
        node = forwarder.node_id
        head = b"".join(_packb(v) for v in (2, "in", node, "UDP"))
        mid = _packb(self.local[0]) + _packb(self.local[1])
        tail = b"".join(_packb(v) for v in (None, forwarder.advertise.get("UDP"), node, ring.epoch,
                                            forwarder.current, False))
        self.drain.configure(head, mid, tail, array("Q", points).tobytes(), array("i", owner_index).tobytes(),
                             len(endpoints), [w.encode() for w in names], [index[links[w]] for w in names],
                             self._requests, self._tokens, bound)
        self.frames.use(endpoints)
        self._usable = bool(endpoints)
