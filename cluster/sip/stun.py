"""STUN keep-alives on SIP's UDP port (RFC 5626 §4.4.2, §8; RFC 5389), sans-IO.

A UA with an outbound flow over UDP keeps its NAT binding open with STUN
Binding requests sent to the SIP port it registered through, and learns from
the XOR-MAPPED-ADDRESS of the answer whether the binding changed (then it
registers again). The edge answers them itself, on the socket they came in
on; they never reach a worker. A SIP message never starts with a byte below
0x02 (a method or ``SIP/2.0``), which is how the two are told apart (RFC 5626
§8, RFC 5389 §6: the two top bits of a STUN message are zero).
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = ["MAGIC_COOKIE", "binding_response", "is_stun"]

MAGIC_COOKIE = 0x2112A442
_HEADER = struct.Struct("!HHI12s")
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101
_XOR_MAPPED_ADDRESS = 0x0020


def is_stun(data: bytes) -> bool:
    """Whether ``data`` looks like a STUN message (RFC 5389 §6: top two bits
    zero, the magic cookie, a length that matches and is a multiple of 4)."""
    if len(data) < _HEADER.size or data[0] > 0x01:
        return False
    header: tuple[int, int, int, bytes] = _HEADER.unpack_from(data)
    _, length, cookie, _ = header
    return cookie == MAGIC_COOKIE and length == len(data) - _HEADER.size and length % 4 == 0


def binding_response(data: bytes, source: tuple[str, int]) -> bytes | None:
    """The Binding success response to a Binding request from ``source``
    (its XOR-MAPPED-ADDRESS, RFC 5389 §15.2), or None for anything else
    (another STUN method, a response, not STUN, an unusable address)."""
    if not is_stun(data):
        return None
    kind, _, _, transaction = _HEADER.unpack_from(data)
    if kind != _BINDING_REQUEST:
        return None
    try:
        address = ipaddress.ip_address(source[0])
        port = int(source[1])
    except ValueError:
        return None
    if not 0 <= port <= 0xFFFF:
        return None
    x_port = port ^ (MAGIC_COOKIE >> 16)
    packed = address.packed
    # §15.2: the address is XORed with the cookie (IPv4), or with the
    # cookie followed by the transaction id (IPv6).
    mask = struct.pack("!I", MAGIC_COOKIE) + transaction
    x_address = bytes(a ^ b for a, b in zip(packed, mask))
    family = 0x01 if address.version == 4 else 0x02
    value = struct.pack("!BBH", 0, family, x_port) + x_address
    attribute = struct.pack("!HH", _XOR_MAPPED_ADDRESS, len(value)) + value
    return _HEADER.pack(_BINDING_SUCCESS, len(attribute), MAGIC_COOKIE, transaction) + attribute
