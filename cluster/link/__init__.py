"""The wire between nodes: msgpack envelopes over ZeroMQ (DESIGN §3)."""

from .envelope import (
    READS, Envelope, FrameQueue, LinkError, pack, pack_array, pack_frame, pack_v2, unpack,
    unpack_frame,
)
from .guard import LinkGuard
from .keys import LinkKeys, node_keys
from .zmq_trio import Inbox, LinkAuthenticator, LinkWatch, Outbox, node_context

__all__ = ["READS", "Envelope", "FrameQueue", "Inbox", "LinkAuthenticator", "LinkError", "LinkGuard",
           "LinkKeys", "LinkWatch", "Outbox", "node_context", "node_keys", "pack", "pack_array", "pack_frame", "pack_v2", "unpack",
           "unpack_frame"]
