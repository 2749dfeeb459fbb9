"""The wire between nodes: msgpack envelopes over ZeroMQ (DESIGN §3)."""

from .envelope import (
    READS, Envelope, FrameQueue, LinkError, pack, pack_array, pack_frame, pack_v2, unpack,
    unpack_frame,
)
from .zmq_trio import Inbox, Outbox

__all__ = ["READS", "Envelope", "FrameQueue", "Inbox", "LinkError", "Outbox", "pack", "pack_array",
           "pack_frame", "pack_v2", "unpack", "unpack_frame"]
