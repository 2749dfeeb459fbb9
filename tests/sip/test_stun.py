"""STUN Binding keep-alives answered at the edge (RFC 5626 §4.4.2, RFC 5389), sans-IO."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from cluster.sip.stun import MAGIC_COOKIE, binding_response, is_stun


def binding_request(transaction: bytes, kind: int = 0x0001, attributes: bytes = b"") -> bytes:
    return struct.pack("!HHI12s", kind, len(attributes), MAGIC_COOKIE, transaction) + attributes


def mapped(response: bytes, transaction: bytes) -> tuple[str, int]:
    kind, length, cookie, txid = struct.unpack_from("!HHI12s", response)
    assert (kind, cookie, txid) == (0x0101, MAGIC_COOKIE, transaction)
    assert length == len(response) - 20
    attr, attr_len = struct.unpack_from("!HH", response, 20)
    assert attr == 0x0020
    _, family, x_port = struct.unpack_from("!BBH", response, 24)
    x_address = response[28:24 + attr_len]
    mask = struct.pack("!I", MAGIC_COOKIE) + transaction
    address = bytes(a ^ b for a, b in zip(x_address, mask))
    assert family == (1 if len(address) == 4 else 2)
    return str(ipaddress.ip_address(address)), x_port ^ (MAGIC_COOKIE >> 16)


@pytest.mark.parametrize("source", [("198.51.100.7", 40123), ("2001:db8::7", 5062), ("10.0.0.1", 0)])
def test_a_binding_request_learns_its_reflexive_address(source):
    transaction = os.urandom(12)
    response = binding_response(binding_request(transaction), source)
    assert response is not None
    assert mapped(response, transaction) == source


@pytest.mark.parametrize("data", [
    b"", b"\r\n\r\n", b"OPTIONS sip:x SIP/2.0\r\n\r\n",
    binding_request(b"x" * 12)[:-1],                       # truncated
    binding_request(b"x" * 12).replace(struct.pack("!I", MAGIC_COOKIE), b"\0\0\0\0"),  # RFC 3489 style
    binding_request(b"x" * 12, kind=0x0101),               # a response, not a request
    binding_request(b"x" * 12, kind=0x0003),               # another method
    binding_request(b"x" * 12, attributes=b"\0\0\0"),      # length not a multiple of 4
])
def test_anything_else_gets_no_answer(data):
    assert binding_response(data, ("198.51.100.7", 5060)) is None


def test_a_sip_message_is_never_taken_for_stun():
    assert not is_stun(b"INVITE sip:bob@example.com SIP/2.0\r\n" + b"x" * 40)
