"""The one versioned envelope that travels between edges and workers.

Raw SIP bytes travel unparsed: the edge only reads the Call-ID, and the worker
parses once (DESIGN §3). A msgpack map with short, stable field names keeps
the format self-describing for a rolling upgrade; ``v`` is bumped on any
incompatible change and a receiver rejects versions it does not know.

kinds:
- ``in``: edge → worker, a message received from the network;
- ``out``: worker → edge, a message to write to the network;
- ``ctl``: either way, control traffic (``data`` holds a msgpack map).

Two encodings, both read by every node of this version:

- version 1, a msgpack map with named fields (``pack``);
- version 2, a msgpack array in a fixed field order, ``[2, kind, edge,
  transport, peer host, peer port, local host, local port, data, conn,
  ts_ns, trace, advertise, sender, epoch, current]``; a later version may
  append fields, which a version-2 reader ignores (``epoch`` and
  ``current`` were appended so: a frame without them reads as epoch 0 and
  current true). Decoding it costs half of a map's
  (no keys to hash and look up), and it was a fifth of the edge's CPU.
  A version-2 frame may also carry several envelopes: an array of such
  arrays (``pack_frame``), written by a worker for everything one link batch
  sends to one edge, so ZeroMQ moves one message instead of several.

A node says in its membership record which version it reads
(``Member.link_version``); a sender writes version 2 only to peers that
read it, so a cluster can be upgraded one node at a time (DESIGN §3).
"""

from __future__ import annotations

from typing import NamedTuple

import msgpack

VERSION = 1
ARRAY_VERSION = 2
READS = ARRAY_VERSION
"""The highest envelope version this code reads (published as link_version)."""
KINDS = ("in", "out", "ctl")
_ARRAY_FIELDS = 14

Address = tuple[str, int]


class LinkError(ValueError):
    """An envelope that cannot be decoded (garbage, wrong version, bad field)."""


class Envelope(NamedTuple):
    """One message between nodes. A named tuple rather than a frozen
    dataclass: two are built per SIP message hop, and a tuple is built in a
    fraction of the time (immutable all the same)."""

    kind: str
    edge: str
    """Id of the edge that owns the socket or connection."""
    transport: str
    """UDP, TCP, TLS, WS or WSS."""
    peer: Address
    """``in``: the source address; ``out``: the destination."""
    local: Address
    """The edge's local socket address the message came in on / leaves from."""
    data: bytes
    conn: int | None = None
    """The edge's stream connection id, None for datagrams or 'any connection'."""
    ts_ns: int = 0
    """When the edge received the message (its clock), for per-hop latency."""
    trace: str | None = None
    """W3C traceparent of the span that produced this envelope."""
    advertise: str | None = None
    """``in``: the edge's public host:port for this transport (Via/Record-Route)."""
    sender: str | None = None
    """Id of the node that sent the envelope."""
    epoch: int = 0
    """``in``: the epoch (etcd revision) of the ring the edge routed with; 0 unknown."""
    current: bool = True
    """``in``: whether the edge's etcd view is current (registered and
    following). False while etcd is out of its reach or it holds a ring
    etcd emptied: the worker then knows no other shard can have been
    given the Call-ID by this edge's view (DESIGN §4 split brain)."""


_packb = msgpack.Packer(use_bin_type=True).pack


def pack(env: Envelope) -> bytes:
    kind, edge, transport, peer, local, data, conn, ts_ns, trace, advertise, sender, epoch, current = env
    fields = {
        "v": VERSION,
        "kind": kind,
        "edge": edge,
        "transport": transport,
        "src" if kind == "in" else "dst": peer,
        "local": local,
        "data": data,
    }
    if conn is not None:
        fields["conn"] = conn
    if ts_ns:
        fields["ts_ns"] = ts_ns
    if trace:
        fields["trace"] = trace
    if advertise:
        fields["adv"] = advertise
    if sender:
        fields["from"] = sender
    if epoch:
        fields["ep"] = epoch
    if not current:
        fields["cur"] = False
    return _packb(fields)


def pack_array(env: Envelope) -> list:
    """Version 2: the envelope as a positional array (see the module doc)."""
    kind, edge, transport, peer, local, data, conn, ts_ns, trace, advertise, sender, epoch, current = env
    return [ARRAY_VERSION, kind, edge, transport, peer[0], peer[1], local[0], local[1], data,
            conn, ts_ns, trace, advertise, sender, epoch, current]


def pack_v2(env: Envelope) -> bytes:
    return _packb(pack_array(env))


def pack_frame(arrays: list[list]) -> bytes:
    """Several version-2 envelopes (``pack_array`` results) in one frame."""
    return _packb(arrays)


class FrameQueue:
    """Version-2 envelopes waiting to leave, by endpoint: each endpoint's
    go out as one frame. ``tag`` travels with each envelope so the sender
    can account for a frame the link refuses (the edge answers the request,
    the worker reports its transaction's transport error)."""

    __slots__ = ("_queued",)

    def __init__(self) -> None:
        self._queued: dict[str, tuple[list, list]] = {}

    def __bool__(self) -> bool:
        return bool(self._queued)

    def add(self, endpoint: str, env: Envelope, tag: object = None) -> None:
        queued = self._queued.get(endpoint)
        if queued is None:
            self._queued[endpoint] = queued = ([], [])
        queued[0].append(pack_array(env))
        queued[1].append(tag)

    def take(self) -> list[tuple[str, bytes, list]]:
        """(endpoint, frame, tags) for everything queued; the queue is empty after."""
        queued, self._queued = self._queued, {}
        return [(endpoint, pack_frame(arrays), tags) for endpoint, (arrays, tags) in queued.items()]


def _address(value: object, name: str) -> Address:
    if (type(value) is list and len(value) == 2 and type(value[0]) is str
            and type(value[1]) is int):
        return (value[0], value[1])
    if (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool)):
        return (value[0], value[1])
    raise LinkError(f"envelope field {name!r} is not [host, port]")


_unpackb = msgpack.unpackb


def _decode(raw: bytes) -> object:
    try:
        return _unpackb(raw, raw=False)
    except Exception as error:  # noqa: BLE001 - msgpack raises several unrelated types
        raise LinkError(f"undecodable envelope: {error}") from None


def unpack(raw: bytes) -> Envelope:
    """One envelope, either version."""
    fields = _decode(raw)
    if type(fields) is list:
        return _from_array(fields)
    return _from_map(fields)


def unpack_frame(raw: bytes) -> list[Envelope]:
    """Every envelope in a frame: one of either version, or several of
    version 2. A malformed frame raises LinkError as a whole."""
    fields = _decode(raw)
    if type(fields) is list:
        if fields and type(fields[0]) is list:
            return [_from_array(item) for item in fields]
        return [_from_array(fields)]
    return [_from_map(fields)]


def _from_array(fields: list) -> Envelope:
    if len(fields) < _ARRAY_FIELDS or fields[0] != ARRAY_VERSION:
        raise LinkError(f"unsupported envelope version {fields[0] if fields else None!r} (array)")
    (_, kind, edge, transport, peer_host, peer_port, local_host, local_port, data, conn, ts_ns,
     trace, advertise, sender) = fields[:_ARRAY_FIELDS]
    if kind not in KINDS:
        raise LinkError(f"unknown envelope kind {kind!r}")
    if type(data) is not bytes or type(edge) is not str or type(transport) is not str:
        raise LinkError("envelope lacks data, edge or transport")
    if type(peer_host) is not str or type(peer_port) is not int \
            or type(local_host) is not str or type(local_port) is not int:
        raise LinkError("envelope addresses are not host and port")
    if conn is not None and type(conn) is not int:
        raise LinkError("envelope field 'conn' is not an integer")
    epoch = fields[_ARRAY_FIELDS] if len(fields) > _ARRAY_FIELDS else 0
    current = fields[_ARRAY_FIELDS + 1] if len(fields) > _ARRAY_FIELDS + 1 else True
    return Envelope(
        kind, edge, transport, (peer_host, peer_port), (local_host, local_port), data, conn,
        ts_ns if type(ts_ns) is int else 0,
        trace if type(trace) is str else None,
        advertise if type(advertise) is str else None,
        sender if type(sender) is str else None,
        epoch if type(epoch) is int else 0,
        current is not False,
    )


def _from_map(fields: object) -> Envelope:
    if not isinstance(fields, dict):
        raise LinkError("envelope is not a map")
    if fields.get("v") != VERSION:
        raise LinkError(f"unsupported envelope version {fields.get('v')!r}")
    kind = fields.get("kind")
    if kind not in KINDS:
        raise LinkError(f"unknown envelope kind {kind!r}")
    data = fields.get("data")
    edge = fields.get("edge")
    transport = fields.get("transport")
    if not isinstance(data, bytes) or not isinstance(edge, str) or not isinstance(transport, str):
        raise LinkError("envelope lacks data, edge or transport")
    conn = fields.get("conn")
    if conn is not None and not isinstance(conn, int):
        raise LinkError("envelope field 'conn' is not an integer")
    ts_ns = fields.get("ts_ns", 0)
    trace = fields.get("trace")
    advertise = fields.get("adv")
    sender = fields.get("from")
    epoch = fields.get("ep", 0)
    return Envelope(
        kind, edge, transport,
        _address(fields.get("src" if kind == "in" else "dst"), "src/dst"),
        _address(fields.get("local"), "local"),
        data, conn,
        ts_ns if type(ts_ns) is int else 0,
        trace if type(trace) is str else None,
        advertise if type(advertise) is str else None,
        sender if type(sender) is str else None,
        epoch if type(epoch) is int else 0,
        fields.get("cur") is not False,
    )
