"""RFC 4475 torture messages sent to a running cluster over UDP (issue 5 item 8).

Each message goes out once, from its own socket. RFC 3261 §18.2.2 sends a
UDP response to the address the request came from (what ``received``
records: the torture messages name hosts that are not us, ``example.com``,
...) at the port the top Via's sent-by names (5060 when none), unless the
Via asks for ``rport``. So each message is sent from its own loopback
address, bound at that port, and the Vias need no rewriting.

What each message must get, from ``tests/conformance/rfc4475/manifest.json``:

- malformed requests (``valid: false``): 400, or 505 for ``badvers``
  (``insuf`` has no Call-ID, so no edge can pick a shard for it: it is
  dropped, and nothing may come back but a 400);
- ``unkscm``/``novelsc``: 416; ``bext01``: 420 with Unsupported; ``zeromf``:
  483 (a proxy must not forward it);
- other valid requests: some final response (they are relayed to hosts
  named by DNS names, which the harness's DNS server never answers, so
  mostly 504 with a Warning; ``mpart01`` has a Route to
  127.0.0.1:5080, which this test answers when it can bind that port);
- responses, malformed or not: nothing (they match no transaction and their
  Vias are not ours).

Three pairs of messages share a transaction key (top Via branch, sent-by
and method): cparam01/cparam02, escnull/regescrt, unkscm/novelsc. RFC 3261
§17.2.3 matches on nothing else, so when a pair lands on one worker the
second is a retransmission of the first and gets nothing: the first's
socket gets its response again, or only once when the second came while the
first still waited for its final response (a DNS lookup: §17.2.2 Trying
absorbs the retransmission). Each outcome is accepted.

Afterwards the cluster must still answer OPTIONS with every worker alive.
"""

from __future__ import annotations

import json
import selectors
import socket
import time

import pytest

from cluster.sip import Request, make_response, parse_message
from tests.e2e.harness import ROOT, UpCluster, options, wait_for

pytestmark = pytest.mark.e2e

CORPUS = ROOT / "tests" / "conformance" / "rfc4475"
SPECIFIC = {"badvers": {505}, "unkscm": {416}, "novelsc": {416}, "bext01": {420},
            "zeromf": {483}, "mismatch02": {400, 501}}
SAME_TRANSACTION = [("cparam01", "cparam02"), ("escnull", "regescrt"), ("unkscm", "novelsc")]
ROUTE_TARGET = ("127.0.0.1", 5080)  # mpart01's Route


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("rfc4475"), workers=2, etcd=etcd_server.endpoint).start()
    wait_for(lambda: len(up.worker_pids()) == 2, what="two workers in the ring")
    yield up
    up.stop()


def _entries() -> list[dict]:
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    return [e for e in manifest["messages"] if e["valid"] is not None and e["name"] != "test"]


def _reply_port(data: bytes) -> int:
    """The port §18.2.2 answers a UDP request at: its top Via's sent-by port
    (default 5060, 5061 for TLS: RFC 3261 §19.1.2); 0 (any) when the Via asks for rport or cannot be read,
    as then the answer goes to the source port."""
    try:
        via = parse_message(data).via
    except Exception:  # noqa: BLE001 - a torture message may break anything
        return 0
    if via.has_rport:
        return 0
    return via.port or (5061 if via.transport.upper() == "TLS" else 5060)


def _status(data: bytes) -> int | None:
    if not data.startswith(b"SIP/2.0 "):
        return None
    try:
        return int(data[8:11])
    except ValueError:
        return None


def test_rfc4475_messages_get_the_answers_the_rfc_expects(cluster):
    entries = _entries()
    assert len(entries) == 49
    workers_before = cluster.worker_pids()
    selector = selectors.DefaultSelector()
    sockets: dict[str, socket.socket] = {}
    got: dict[str, list[bytes]] = {}
    # mpart01 is relayed to its Route: answer it there if the port is free.
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        relay.bind(ROUTE_TARGET)
        selector.register(relay, selectors.EVENT_READ, "relay")
    except OSError:
        relay.close()
        relay = None
    relayed: list[bytes] = []
    try:
        for i, entry in enumerate(entries):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            data = (CORPUS / entry["file"]).read_bytes()
            sock.bind((f"127.77.{i // 250}.{i % 250 + 1}", _reply_port(data)))
            sock.setblocking(False)
            sockets[entry["name"]] = sock
            got[entry["name"]] = []
            selector.register(sock, selectors.EVENT_READ, entry["name"])
        for entry in entries:
            sockets[entry["name"]].sendto((CORPUS / entry["file"]).read_bytes(),
                                          ("127.0.0.1", cluster.port))
        requests = {e["name"] for e in entries
                    if not (CORPUS / e["file"]).read_bytes().startswith(b"SIP/2.0")}
        # Without the relay port, mpart01 waits for Timer F (64·T1 = 32 s).
        deadline = time.monotonic() + (15 if relay is not None else 45)
        quiet_until = time.monotonic() + 3  # responses must stay unanswered this long
        while time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                data = key.fileobj.recv(65536)
                if key.data == "relay":
                    relayed.append(data)
                    message = parse_message(data)
                    if isinstance(message, Request):
                        relay.sendto(make_response(message, 200).to_bytes(), ("127.0.0.1", cluster.port))
                    continue
                got[key.data].append(data)
            answered = {n for n in requests
                        if any((_status(d) or 0) >= 200 for d in got[n]) or n == "insuf"}
            absorbed = {second for first, second in SAME_TRANSACTION
                        if any((_status(d) or 0) >= 200 for d in got[first])
                        and not any((_status(d) or 0) >= 200 for d in got[second])}
            if answered | absorbed >= requests and time.monotonic() > quiet_until:
                break
    finally:
        for sock in sockets.values():
            sock.close()
        if relay is not None:
            relay.close()

    problems = []
    finals = {name: [s for s in map(_status, data) if s is not None and s >= 200]
              for name, data in got.items()}
    absorbed = {second for first, second in SAME_TRANSACTION if finals[first] and not finals[second]}
    for entry in entries:
        name = entry["name"]
        data = (CORPUS / entry["file"]).read_bytes()
        mine = finals[name]
        if data.startswith(b"SIP/2.0"):
            if got[name]:
                problems.append(f"{name}: a response was answered: {got[name][0][:60]!r}")
            continue
        if name in absorbed and not mine:
            continue  # a retransmission of its pair's first message (see module doc)
        if name == "insuf" and not mine:
            continue  # no Call-ID: dropped at the edge
        if not mine:
            problems.append(f"{name}: no final response ({[d[:40] for d in got[name]]})")
            continue
        status = mine[0]
        if name in SPECIFIC:
            if status not in SPECIFIC[name]:
                problems.append(f"{name}: {status}, expected {sorted(SPECIFIC[name])}")
        elif entry["valid"] is False and status != 400:
            problems.append(f"{name}: {status}, expected 400")
        elif entry["valid"] and status in (400, 500):
            problems.append(f"{name}: valid but answered {status}")
    assert not problems, "\n".join(problems) + cluster.logs()

    # The specific answers carry what the RFC asks for.
    bext = next(d for d in got["bext01"] if _status(d) == 420)
    # A proxy names the Proxy-Require tags it lacks (RFC 3261 §16.3 step 5);
    # the Require tags are for the endpoint.
    assert set(parse_message(bext).get_all("Unsupported")) == {
        "noProxiesSupportThis", "norDoAnyProxiesSupportThis"}
    assert b"Warning: 399" in next(d for d in got["badinv01"] if _status(d) == 400)
    if relay is not None:
        # mpart01 went on to its Route, one hop further, and the callee's 200 came back.
        forwarded = parse_message(relayed[0])
        assert forwarded.method == "MESSAGE" and forwarded.max_forwards == 69
        assert forwarded.via.port == cluster.port and len(forwarded.vias) == 2
        assert forwarded.body == parse_message((CORPUS / "mpart01.dat").read_bytes()).body
        assert finals["mpart01"][0] == 200
    else:
        assert finals["mpart01"][0] in (408, 503)

    # The cluster keeps serving, with the same worker processes.
    assert options(cluster.port)[0] == 200
    assert cluster.worker_pids() == workers_before

