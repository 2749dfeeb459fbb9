"""The wire between nodes: msgpack envelopes over ZeroMQ (DESIGN §3)."""

from .envelope import Envelope, LinkError, pack, unpack
from .zmq_trio import Inbox, Outbox

__all__ = ["Envelope", "Inbox", "LinkError", "Outbox", "pack", "unpack"]
