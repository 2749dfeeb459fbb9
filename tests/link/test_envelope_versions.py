"""Version 1 (map) and version 2 (array, and frames of several) envelopes.

Every node of this version reads both; a sender writes version 2 only to
peers whose membership record says they read it (cluster/link/envelope.py).
"""

from __future__ import annotations

import msgpack
import pytest

from cluster.link import (
    Envelope, FrameQueue, LinkError, pack, pack_array, pack_frame, pack_v2, unpack, unpack_frame,
)

FULL = Envelope("in", "edge-1", "TCP", ("2001:db8::1", 5061), ("127.0.0.1", 5060), b"INVITE ...",
                7, 1_700_000_000_000_000_000, "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                "sip.example.com:5060", "edge-1")
BARE = Envelope("out", "edge-2", "UDP", ("192.0.2.1", 5060), ("0.0.0.0", 5060), b"SIP/2.0 200 OK")


@pytest.mark.parametrize("env", [FULL, BARE])
def test_both_versions_carry_the_same_envelope(env):
    assert unpack(pack(env)) == env
    assert unpack(pack_v2(env)) == env
    assert unpack_frame(pack(env)) == [env]
    assert unpack_frame(pack_v2(env)) == [env]
    assert len(pack_v2(env)) < len(pack(env))


def test_a_frame_carries_several_in_order():
    assert unpack_frame(pack_frame([pack_array(FULL), pack_array(BARE), pack_array(FULL)])) == [
        FULL, BARE, FULL]


def test_fields_a_later_version_appends_are_ignored():
    later = pack_array(BARE) + ["a field from the future", 42]
    assert unpack(msgpack.packb(later, use_bin_type=True)) == BARE


def test_ring_epoch_and_view_currency_travel_and_default_for_older_senders():
    routed = FULL._replace(epoch=4711, current=False)
    for packed in (pack(routed), pack_v2(routed)):
        env = unpack(packed)
        assert (env.epoch, env.current) == (4711, False)
    # A version-2 array of the previous release has 14 fields: epoch
    # unknown, view taken as current (a fenced worker refuses it).
    older = unpack(msgpack.packb(pack_array(routed)[:14], use_bin_type=True))
    assert (older.epoch, older.current) == (0, True)


def _array(**changes) -> bytes:
    fields = pack_array(BARE)
    names = ["v", "kind", "edge", "transport", "peer_host", "peer_port", "local_host", "local_port",
             "data", "conn", "ts_ns", "trace", "advertise", "sender", "epoch", "current"]
    for name, value in changes.items():
        fields[names.index(name)] = value
    return msgpack.packb(fields, use_bin_type=True)


@pytest.mark.parametrize("raw", [
    _array(v=3),                      # a version this code does not read
    _array(kind="cmd"),
    _array(data="text, not bytes"),
    _array(peer_port="5060"),
    _array(local_host=None),
    _array(conn="7"),
    msgpack.packb([2, "in"]),         # too short
    msgpack.packb([]),
    msgpack.packb([pack_array(BARE), [2, "in"]], use_bin_type=True),  # one bad in a frame
    b"\x93\x01",                      # truncated
])
def test_malformed_arrays_and_frames_are_refused(raw):
    with pytest.raises(LinkError):
        unpack_frame(raw)


def test_a_frame_queue_sends_one_frame_per_endpoint_with_its_tags():
    queue = FrameQueue()
    assert not queue
    queue.add("ipc:///w1", FULL, "a")
    queue.add("ipc:///w2", BARE)
    queue.add("ipc:///w1", BARE, "b")
    assert queue
    taken = {endpoint: (unpack_frame(frame), tags) for endpoint, frame, tags in queue.take()}
    assert taken == {"ipc:///w1": ([FULL, BARE], ["a", "b"]), "ipc:///w2": ([BARE], [None])}
    assert not queue and queue.take() == []
