"""The ``flow`` field of an ``out`` envelope (strict RFC 5626 flow) in both encodings."""

from __future__ import annotations

import msgpack
import pytest

from cluster.link import Envelope, pack, pack_v2, unpack

OUT = Envelope("out", "edge-1", "TCP", ("203.0.113.5", 40001), ("192.0.2.1", 5060), b"INVITE ...", 7,
               sender="w1", flow=True)


@pytest.mark.parametrize("encode", [pack, pack_v2])
def test_flow_survives_both_encodings(encode):
    assert unpack(encode(OUT)).flow is True
    assert unpack(encode(OUT._replace(flow=False))).flow is False


def test_a_version_2_envelope_of_an_older_sender_has_no_flow():
    fields = msgpack.unpackb(pack_v2(OUT))
    assert unpack(msgpack.packb(fields[:14])).flow is False, "14 fields: written before flows existed"
