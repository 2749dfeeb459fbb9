"""The edge's compiled UDP path against its Python reference, datagram by
datagram: whatever the C core routes itself must give the frame
``Forwarder.ingress`` gives, byte for byte; everything else it must hand
back to Python (``-1``). The C module is imported directly, whatever
SIPCLUSTER_PURE_PYTHON says: these tests are about the C code."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.defence import BanTable, EdgeGuard, ScannerMatcher
from cluster.defence.scanner import DEFAULT_BLOCKED_AGENTS
from cluster.link import FrameQueue, Outbox, unpack_frame
from cluster.sharding.ring import Ring
from cluster.sip import ParseError, extract_call_id
from cluster.speedups import _edge
from nodes.edge.fastpath import CompiledPath
from nodes.edge.forwarder import Forwarder, response_shard
from tests.e2e.test_wire_fuzz import mutate
from tests.sip.samples import INVITE, OPTIONS, RESPONSE
from tests.sip.test_properties import requests

ROOT = Path(__file__).resolve().parents[2]
CORPUS = [path.read_bytes() for name in ("rfc4475", "rfc5118")
          for path in sorted((ROOT / "tests" / "conformance" / name).glob("*.dat"))]
LOCAL = ("127.0.0.1", 5060)
WORKERS = ("w1", "w2", "worker-3")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_EMPTY = (b"", b"\n", b"\r\n", b"\r\n\r\n")


@pytest.fixture(scope="module")
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def make_forwarder(context, *, guard=None, advertise="203.0.113.5:5060", current=True, epoch=42):
    # A real Outbox: ingress queues every envelope in the frames it is given
    # (all workers read version-2 frames), so nothing is sent.
    forwarder = Forwarder("edge-1", Outbox(context), max_message=4000, server="test", guard=guard)
    links = {w: f"tcp://127.0.0.1:{1 + i}" for i, w in enumerate(WORKERS)}
    forwarder.update(Ring(WORKERS, epoch=epoch), links, set(links.values()))
    forwarder.advertise = {"UDP": advertise} if advertise else {}
    forwarder.current = current
    return forwarder


def compiled(forwarder) -> CompiledPath:
    path = CompiledPath(_edge, -1, forwarder, LOCAL, slots=32)
    assert path.prepare()
    return path


def python_path(forwarder, data: bytes, source):
    """(endpoint, frame) or None, and the answer of Forwarder.ingress."""
    frames = FrameQueue()
    answer = forwarder.ingress(data, "UDP", source, LOCAL, None, frames)
    taken = frames.take()
    assert len(taken) <= 1
    return ((taken[0][0], taken[0][1]) if taken else None), answer


def check_one(forwarder, path, data: bytes, source) -> int:
    """Route ``data`` both ways; what C routes must be Python's frame."""
    queued, answer = python_path(forwarder, data, source)
    ts = unpack_frame(queued[1])[0].ts_ns if queued else 1_765_000_000_000_000_000
    index = path.drain.route(data, source[0], source[1], ts)
    if index == -2:
        assert data in _EMPTY
    elif index >= 0:
        assert answer is None and queued is not None
        frame, count = path.drain.take(index)
        assert count == 1
        assert (path.frames.endpoints[index], frame) == queued
    else:
        assert index == -1
    assert not path.drain.pending()
    return index


def with_wk(data: bytes, worker: str) -> bytes:
    return data.replace(b";received=192.0.2.1", b";received=192.0.2.1;wk=" + worker.encode(), 1)


GUARDED = EdgeGuard(bans=BanTable(16), rates=None, scanners=ScannerMatcher(DEFAULT_BLOCKED_AGENTS), ban_time=60)
sources = st.tuples(st.sampled_from(["192.0.2.7", "10.0.0.1", "127.0.0.1", "255.255.255.255"]),
                    st.integers(0, 65535))
datagrams = st.one_of(
    requests().map(lambda sample: sample[0]),
    st.sampled_from(CORPUS + [INVITE, OPTIONS, RESPONSE, *_EMPTY]),
    st.builds(lambda data, seed: mutate(data, random.Random(seed)),
              st.sampled_from(CORPUS + [INVITE, OPTIONS, RESPONSE]), st.integers(0, 2**32)),
    st.builds(with_wk, st.sampled_from([RESPONSE, RESPONSE.replace(b"Via:", b"v :")]),
              st.sampled_from(WORKERS + ("gone", "w1;x", ""))),
    st.builds(lambda data, agent: data.replace(b"Max-Forwards", b"User-Agent: " + agent + b"\r\nMax-Forwards"),
              st.sampled_from([INVITE, OPTIONS]), st.sampled_from([b"sipvicious 0.3", b"Friendly-Scanner", b"Linphone"])),
    st.builds(lambda data, pad: data + b"x" * pad, st.sampled_from([INVITE, RESPONSE]), st.integers(3000, 5000)),
    st.binary(max_size=300),
)


@SETTINGS
@given(datagrams, sources, st.booleans())
def test_what_the_compiled_path_routes_is_the_python_frame_byte_for_byte(context, data, source, guarded):
    forwarder = make_forwarder(context, guard=GUARDED if guarded else None)
    check_one(forwarder, compiled(forwarder), data, source)


def test_the_compiled_path_takes_the_common_messages_and_the_corpus(context):
    """The C path is not a no-op that hands everything back: typical
    requests and responses, and most of the torture corpus that Python
    forwards, are routed in C (and equal Python's frames)."""
    forwarder = make_forwarder(context, guard=GUARDED)
    path = compiled(forwarder)
    for data in (INVITE, OPTIONS, RESPONSE, with_wk(RESPONSE, "w2"), RESPONSE.replace(b"Call-ID", b"i")):
        assert check_one(forwarder, path, data, ("192.0.2.7", 5062)) >= 0
    assert check_one(forwarder, path, with_wk(RESPONSE, "w2"), ("192.0.2.7", 5062)) == WORKERS.index("w2")
    handled = forwarded = 0
    for data in CORPUS:
        queued, _ = python_path(forwarder, data, ("192.0.2.7", 5062))
        forwarded += queued is not None
        handled += check_one(forwarder, path, data, ("192.0.2.7", 5062)) >= 0
    assert forwarded >= 40 and handled >= forwarded * 0.8, (handled, forwarded)


def test_settings_in_the_envelope_follow_the_forwarder(context):
    """No advertised address, a stale etcd view, another epoch: the table
    is rebuilt and the frames still match."""
    forwarder = make_forwarder(context, advertise=None, current=False, epoch=2**40)
    path = compiled(forwarder)
    assert check_one(forwarder, path, INVITE, ("10.1.2.3", 40000)) >= 0
    forwarder.current = True
    forwarder.advertise = {"UDP": "edge.example.com:5060"}
    assert path.prepare()
    assert check_one(forwarder, path, INVITE, ("10.1.2.3", 40000)) >= 0


def test_a_drain_of_many_datagrams_gives_the_frames_of_a_frame_queue(context):
    """Several datagrams, some routed in C and some through Python with the
    same frame buffers (CompiledFrames), give the frames a FrameQueue gives
    for the same datagrams, in the same order."""
    forwarder = make_forwarder(context)
    path = compiled(forwarder)
    rng = random.Random(5)
    batch = []
    for n in range(60):
        data = (INVITE, OPTIONS, RESPONSE)[n % 3].replace(b"a84b4c76e66710", b"call-%d" % rng.randrange(10**9))
        if n % 7 == 0:
            data = data.replace(b"Call-ID: ", b"Call-ID:\r\n ")  # folded: the C path hands it back
        batch.append((data, (f"192.0.2.{n % 5}", 5060 + n)))
    reference = FrameQueue()
    for data, source in batch:
        assert forwarder.ingress(data, "UDP", source, LOCAL, None, reference) is None
    expected = {endpoint: frame for endpoint, frame, _ in reference.take()}
    stamps = {}
    for frame in expected.values():
        for env in unpack_frame(frame):
            stamps[env.data] = env.ts_ns
    by_python = 0
    for data, source in batch:
        if path.drain.route(data, source[0], source[1], stamps[data]) == -1:
            by_python += 1
            assert forwarder.ingress(data, "UDP", source, LOCAL, None, path.frames) is None
    assert by_python == 9
    got = {endpoint: frame for endpoint, frame, queued in path.frames.take()}
    assert not path.frames
    # The Python path stamped its own time: equal but for that.
    assert {e: [env._replace(ts_ns=0) for env in unpack_frame(f)] for e, f in got.items()} == \
        {e: [env._replace(ts_ns=0) for env in unpack_frame(f)] for e, f in expected.items()}


def test_a_refused_compiled_frame_gives_flush_the_tags_of_each_envelope(context):
    forwarder = make_forwarder(context)
    path = compiled(forwarder)
    data = INVITE.replace(b"a84b4c76e66710", b"refused-1")
    index = path.drain.route(data, "192.0.2.9", 5099, 7)
    assert index >= 0
    ((endpoint, frame, queued),) = path.frames.take()
    assert len(queued) == 1
    ((tag_data, source, env, call_id),) = list(queued)
    assert (tag_data, source, env.ts_ns, call_id) == (data, ("192.0.2.9", 5099), 7, extract_call_id(data))


def test_the_c_path_is_off_while_python_must_decide(context):
    forwarder = make_forwarder(context, guard=EdgeGuard(bans=BanTable(16), rates=None,
                                                       scanners=ScannerMatcher(()), ban_time=60))
    path = compiled(forwarder)
    forwarder.guard.bans.add("192.0.2.99", 10**12, 0)
    assert not path.prepare()
    forwarder.guard.bans.remove("192.0.2.99")
    assert path.prepare()
    forwarder.link_down(forwarder.worker_links["w1"])  # w1 suspect: its calls routed around
    assert not forwarder.router.by_ring and not path.prepare()


@SETTINGS
@given(st.one_of(st.binary(max_size=400), requests().map(lambda s: s[0]),
                 st.builds(lambda data, seed: mutate(data, random.Random(seed)),
                           st.sampled_from(CORPUS + [INVITE, OPTIONS, RESPONSE]), st.integers(0, 2**32))))
def test_the_call_id_is_pythons_or_left_to_python(data):
    value = _edge.call_id(data)
    try:
        expected = extract_call_id(data)
    except ParseError:
        assert value is None
        return
    assert value is None or value == expected
    assert _edge.response_shard(data) == (response_shard(data) or "").encode() or (
        _edge.response_shard(data) is None and response_shard(data) is None)


def test_the_wire_fuzz_mutants_never_crash_the_c_path(context):
    forwarder = make_forwarder(context, guard=GUARDED)
    path = compiled(forwarder)
    rng = random.Random(19)
    for n in range(3000):
        data = mutate(CORPUS[n % len(CORPUS)], rng)
        check_one(forwarder, path, data, ("192.0.2.7", n))


@SETTINGS
@given(st.binary(max_size=600), st.integers(1, 64))
def test_blake2b_is_hashlibs(data, size):
    assert _edge.blake2b(data, size) == hashlib.blake2b(data, digest_size=size).digest()


@SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=20), st.integers(0, 2**64 - 1))
def test_sampling_is_the_forwarders_test(call_ids, bound):
    """A call whose trace is sampled (Forwarder.ingress's test on the low 64
    bits of a 16-byte BLAKE2b) is left to Python; any other is routed."""
    drain = _edge.Drain(-1, 4000, 1)
    points, owners = Ring(["w1"]).placement()
    from array import array
    drain.configure(b"", b"", b"", array("Q", points).tobytes(), array("i", [0] * (len(owners) + 1)).tobytes(),
                    1, [], [], True, [], bound)
    for call_id in call_ids:
        data = OPTIONS.replace(b"a84b4c76e66710@pc33.atlanta.example.com", call_id.replace(b"\r", b"x").replace(b"\n", b"x").strip(b" \t") or b"x")
        cid = extract_call_id(data)
        sampled = int.from_bytes(hashlib.blake2b(cid, digest_size=16).digest()[8:], "big") < bound
        index = drain.route(data, "192.0.2.1", 5060, 1)
        assert index == (-1 if sampled else 0)
        drain.take(0)
