"""Only members may talk on a node link (CurveZMQ + ZAP), end to end.

`sipcluster up` (separate processes, real etcd) and an attacker in this
process: PUSH sockets with no key, a random key, and a member's key of the
wrong role connect to the worker's and the edge's link and send well-formed
envelopes. None is processed: the worker would answer the OPTIONS (and the
edge would write its ``out`` envelope) to a UDP socket this test listens on.
Each attempt is counted by reason and logged; garbage bytes on a link
connection are counted too and stop no node.
"""

from __future__ import annotations

import socket
import uuid

import pytest
import zmq
import zmq.auth

from cluster.link import Envelope, pack_v2
from tests.e2e.harness import UpCluster, options, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("link-auth"), workers=1, etcd=etcd_server.endpoint,
                   extra=["--prefix", f"/linkauth{uuid.uuid4().hex[:8]}"]).start()
    yield up
    up.stop()


def _members(cluster) -> dict[str, dict]:
    status = cluster.status()
    return {m["role"]: m for m in status["members"]}


def _failures(cluster, role: str) -> dict[str, int]:
    return _members(cluster)[role]["status"]["link_auth_failures"]


def _member_keys(cluster, node_id: str) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(cluster.state_dir / "up" / "keys" / node_id / "link.key_secret")
    return public, secret


@pytest.fixture()
def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def _options(target: tuple[str, int], call_id: str) -> bytes:
    host, port = target
    return (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{call_id[:12]};rport\r\n"
            f"Max-Forwards: 70\r\nTo: <sip:{host}:{port}>\r\nFrom: <sip:x@{host}>;tag=1\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def _attack(link: str, envelope: bytes, keys: tuple[bytes, bytes] | None, server_key: bytes) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys[1])
    sock.connect(link)
    for _ in range(5):
        sock.send(envelope)  # queued until a connection is up (never, here)
    return sock


def _received(sock: socket.socket, marker: bytes) -> bool:
    try:
        while True:
            data, _ = sock.recvfrom(65535)
            if marker in data:
                return True
    except (TimeoutError, BlockingIOError):
        return False


@pytest.mark.parametrize("role", ["worker", "edge"])
def test_no_key_a_stranger_key_or_a_wrong_role_key_is_refused_counted_and_logged(cluster, listener, role):
    members = _members(cluster)
    target = members[role]
    other = "edge" if role == "worker" else "worker"
    link, server_key = target["link"], target["curve_key"].encode()
    others_refused = _failures(cluster, other)
    sink = listener.getsockname()
    marker = f"attack-{uuid.uuid4().hex}".encode()
    if role == "worker":
        # An edge's envelope claiming the packet came from 127.0.0.1: a worker
        # that believed it would answer to our socket (and trust the source).
        envelope = pack_v2(Envelope("in", members["edge"]["id"], "UDP", sink, ("127.0.0.1", cluster.port),
                                    _options(sink, marker.decode()), None, 0, None, None, "edge-1"))
    else:
        # A worker's envelope telling the edge to write bytes to any address.
        envelope = pack_v2(Envelope("out", members["edge"]["id"], "UDP", sink, ("127.0.0.1", cluster.port),
                                    b"INJECTED " + marker, sender="worker-1"))
    # The key of a member whose role never sends to this link: the target's own.
    wrong_role = _member_keys(cluster, target["id"])
    attempts = [("handshake", None), ("unknown_key", zmq.curve_keypair()), ("wrong_role", wrong_role)]
    log_path = cluster.state_dir / "up" / f"{target['id']}.log"
    for reason, keys in attempts:
        before = _failures(cluster, role)[reason]
        sock = _attack(link, envelope, keys, server_key)
        try:
            wait_for(lambda reason=reason, before=before: _failures(cluster, role)[reason] > before, timeout=60,
                     what=f"{role} to count a {reason} refusal")
        finally:
            sock.close(0)
        wait_for(lambda reason=reason: f"link connection refused ({reason})" in log_path.read_text(errors="replace"),
                 timeout=30, what=f"a log line naming the {reason} refusal")
    # The node still serves members: a real request goes through edge and
    # worker and back. Everything the attacker queued was sent before it.
    assert options(cluster.port, f"after-attack-{uuid.uuid4().hex[:8]}")[0] == 200
    assert not _received(listener, marker), "an envelope from a non-member was processed"
    assert _failures(cluster, other) == others_refused, "the attack reached the other node"


def test_garbage_on_a_link_connection_is_counted_and_stops_no_node(cluster):
    members = _members(cluster)
    pids = {role: m["pid"] for role, m in members.items()}
    for role in ("worker", "edge"):
        link = members[role]["link"]
        before = _failures(cluster, role)["handshake"]
        if link.startswith("ipc://"):
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.connect(link[len("ipc://"):])
        else:
            host, port = link[len("tcp://"):].rsplit(":", 1)
            raw = socket.create_connection((host, int(port)))
        with raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
            wait_for(lambda role=role, before=before: _failures(cluster, role)["handshake"] > before, timeout=60,
                     what=f"{role} to count the garbage connection")
    assert options(cluster.port, f"after-garbage-{uuid.uuid4().hex[:8]}")[0] == 200
    assert {role: m["pid"] for role, m in _members(cluster).items()} == pids
