"""Wire fuzzing (issue 19 part 5): the RFC 4475 and RFC 5118 torture corpus
and seeded mutations of it, sent to a running cluster over UDP and TCP in
batches, with an OPTIONS probe between batches.

Every probe is answered, no node restarts, no node counts an
``internal_error`` (a bug met by a message), and worker memory goes back
to its baseline once the transactions the batches opened have ended.

Nothing leaves the machine: every request for a foreign domain goes to
``worker.outbound_proxy``, a loopback socket this test reads and never
answers; responses go to the loopback source the fuzzer sent from (§18.2.2
``received``). Mutations never insert or delete digits, dots or colons, so
they cannot invent a new address.
"""

from __future__ import annotations

import random
import socket
import time

import pytest

from tests.e2e.harness import ROOT, UpCluster, options, wait_for

from .test_overload import MB, rss

pytestmark = pytest.mark.e2e

CORPUS = [path.read_bytes() for name in ("rfc4475", "rfc5118")
          for path in sorted((ROOT / "tests" / "conformance" / name).glob("*.dat"))]
SEED = 19
MUTANTS = 3000
BATCH = 100
T1 = 0.1  # transactions the fuzz opens end within 64·T1 = 6.4 s
_INSERTS = b"<>;,=@\"\\ \t\r\n%\x00\xff\x80sipSIP/~!*'()[]{}|^`ABCxyz"
_SAFE_DELETE = frozenset(b"0123456789.:")


def mutate(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\r\n")
    kind = rng.randrange(8)
    if kind == 0:  # truncated anywhere
        return data[:rng.randrange(len(data) + 1)]
    if kind == 1 and len(lines) > 1:  # a line gone
        del lines[rng.randrange(len(lines))]
    elif kind == 2:  # a line repeated, up to many times
        line = lines[rng.randrange(len(lines))]
        lines[rng.randrange(len(lines)):0] = [line] * rng.choice((1, 2, 50))
    elif kind == 3:  # bytes inserted
        out = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            out[rng.randrange(len(out) + 1):0] = bytes(rng.choice(_INSERTS) for _ in range(rng.randrange(1, 5)))
        return bytes(out)
    elif kind == 4:  # bytes removed (never part of an address)
        out = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            at = rng.randrange(len(out)) if out else 0
            if out and out[at] not in _SAFE_DELETE:
                del out[at]
        return bytes(out)
    elif kind == 5:  # line ends changed
        return data.replace(b"\r\n", rng.choice((b"\n", b"\r", b"\r\n\r\n", b" \r\n")), rng.randrange(1, 6))
    elif kind == 6:  # a header value made long
        at = rng.randrange(len(lines))
        lines[at] = lines[at] + b"a" * rng.choice((100, 5000, 30000))
    else:  # case flipped
        return bytes(b ^ 0x20 if (65 <= b <= 90 or 97 <= b <= 122) and rng.random() < 0.1 else b for b in data)
    return b"\r\n".join(lines)


@pytest.fixture(scope="module")
def sink():
    """The outbound proxy: a loopback UDP socket that only reads."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory, sink):
    up = UpCluster(tmp_path_factory.mktemp("fuzz"), workers=2, etcd=etcd_server.endpoint, env={
        "SIPCLUSTER_WORKER_OUTBOUND_PROXY": f"sip:127.0.0.1:{sink.getsockname()[1]};transport=udp",
        "SIPCLUSTER_WORKER_T1": str(T1), "SIPCLUSTER_WORKER_T2": "1.0",
    }).start()
    try:
        wait_for(lambda: len(up.worker_pids()) == 2 and options(up.port)[0] == 200, timeout=60,
                 what="two workers answering")
        yield up
    finally:
        up.stop()


def nodes(cluster: UpCluster) -> dict[str, dict]:
    return {m["id"]: m for m in cluster.status()["members"]}


def internal_errors(cluster: UpCluster) -> int:
    return sum(m["status"]["stats"].get("internal_error", 0) for m in nodes(cluster).values())


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except (BlockingIOError, ConnectionError):
        pass


def send_tcp(port: int, messages: list[bytes]) -> None:
    """The messages one after another on a stream; a connection the edge
    closes (a framing error) is replaced by a new one."""
    sock = None
    try:
        for data in messages:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.setblocking(False)
            try:
                sock.sendall(data)
                drain(sock)
            except (BlockingIOError, OSError):
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()


def test_corpus_and_mutations_over_udp_and_tcp(cluster, sink):
    rng = random.Random(SEED)
    messages = CORPUS + [mutate(rng.choice(CORPUS), rng) for _ in range(MUTANTS)]
    before = nodes(cluster)
    errors = internal_errors(cluster)
    for _ in range(100):
        options(cluster.port)
    workers = {i: m["pid"] for i, m in before.items() if m["role"] == "worker"}
    baseline = {i: rss(pid) for i, pid in workers.items()}
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        for n in range(0, len(messages), BATCH):
            batch = messages[n:n + BATCH]
            for data in batch:
                try:
                    udp.sendto(data[:65507], ("127.0.0.1", cluster.port))
                except OSError:
                    pass
                drain(udp)
            send_tcp(cluster.port, batch)
            drain(sink)
            for transport in ("udp", "tcp"):
                wait_for(lambda t=transport: options(cluster.port, transport=t, timeout=1)[0] == 200,
                         timeout=15, what=f"a {transport} probe answered after batch {n // BATCH}")
    assert time.monotonic() - started < 300
    after = nodes(cluster)
    assert {i: m["pid"] for i, m in after.items()} == {i: m["pid"] for i, m in before.items()}, "a node restarted"
    assert internal_errors(cluster) == errors
    for wid, pid in workers.items():
        wait_for(lambda pid=pid, wid=wid: rss(pid) - baseline[wid] < 24 * MB, timeout=90, interval=1,
                 what=f"worker {wid} back near its baseline of {baseline[wid] // MB} MB")
    assert options(cluster.port)[0] == 200
