"""The worker's message path in one process: CPU per proxied call.

A worker shard (``nodes.worker.node.WorkerNode``) is fed the envelopes of
whole calls — INVITE, 180, 200, ACK, BYE, 200 — exactly as its link loop
would receive them from an edge, and its outbound envelopes are collected
instead of being written to ZeroMQ. The callee is simulated from what the
worker forwards (it answers with the forwarded request's Via stack and
Record-Route), so every message goes through parse, the transaction layer,
the default application, the proxy core and serialisation; timers fire on a
simulated clock at the configured call rate, so completed transactions are
reaped as they would be.

Only the worker's own work is timed (``receive`` and timer handling, with the
envelope decode); building the callee's answers is not. No etcd, no sockets:
this isolates the per-call CPU that ``compare.py`` measures through SIPp.

    .venv/bin/python ops/bench/worker.py [--calls N] [--rounds R] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cluster.config import load_config  # noqa: E402
from cluster.link import Envelope, pack_v2, unpack  # noqa: E402
from cluster.sip import Request, make_response, parse_message  # noqa: E402

EDGE = "edge-1"
EDGE_ADDR = ("127.0.0.1", 5060)
ADVERTISE = "127.0.0.1:5060"
UAC = ("127.0.0.1", 5061)
UAS = ("127.0.0.1", 5070)
CALL_RATE = 500.0  # simulated calls/s: how fast the clock moves between calls

SDP = (b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
       b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class CollectingOutbox:
    """Stands in for the worker's ZeroMQ PUSH sockets: keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, endpoint: str, data: bytes) -> bool:
        self.sent.append(data)
        return True

    def connect(self, endpoint: str) -> None:
        return None


def caller_request(method: str, n: int, *, uri: str, cseq: int, route: str | None = None,
                   to_tag: str | None = None, body: bytes = b"") -> bytes:
    """A request from the caller shaped like ops/bench/scenarios/uac_call.xml."""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {UAC[0]}:{UAC[1]};branch=z9hG4bK-{n}-{cseq}-{method};rport",
    ]
    if route:
        lines.append(f"Route: {route}")
    lines += [
        f"From: <sip:sipp@bench.invalid>;tag=caller{n}",
        f"To: <sip:service@{UAS[0]}:{UAS[1]}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {n}-bench@{UAC[0]}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:sipp@{UAC[0]}:{UAC[1]};transport=UDP>",
        "Max-Forwards: 70",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def callee_response(forwarded: bytes, status: int, to_tag: str, body: bytes = b"") -> bytes:
    request = parse_message(forwarded)
    assert isinstance(request, Request)
    headers = [("Contact", f"<sip:service@{UAS[0]}:{UAS[1]};transport=UDP>")]
    headers += [("Record-Route", rr) for rr in request.get_all("record-route")]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return make_response(request, status, headers=tuple(headers), to_tag=to_tag, body=body).to_bytes()


def inbound(data: bytes, peer: tuple[str, int]) -> bytes:
    return pack_v2(Envelope("in", EDGE, "UDP", peer, EDGE_ADDR, data, None, time.time_ns(),
                            None, ADVERTISE, EDGE))


def make_worker():
    from nodes.worker.node import WorkerNode
    from nodes.worker.services import Services

    config = load_config(None, env={}, overrides={"cluster.node_id": "w-bench"})
    services = Services(domains=["localhost"], trusted=["127.0.0.0/8"], nonce_secret=b"bench-nonce-secret-0123",
                        nonce_ttl=300, locations=None, users=None)
    worker = WorkerNode(config, services=services)
    worker.inbox.close()
    worker.links.outbox = CollectingOutbox()
    worker.links.edges = {EDGE: "sink"}
    worker.links.array_edges = {EDGE}  # edges of this version read version-2 envelopes
    return worker


class Bench:
    def __init__(self) -> None:
        self.worker = make_worker()
        self.clock = 1000.0
        # The simulated clock is passed to every input (the TU reads no clock).
        self.busy = 0.0
        self.messages = 0

    def feed(self, raw: bytes) -> list[bytes]:
        """One inbound envelope through the worker; returns the SIP bytes it sent."""
        worker = self.worker
        sent = worker.links.outbox.sent
        start = len(sent)
        t0 = time.perf_counter()
        worker.receive(unpack(raw), self.clock)
        worker.transactions.rest()  # as the link loop does after each batch
        self.busy += time.perf_counter() - t0
        self.messages += 1
        return [unpack(out).data for out in sent[start:]]

    def timers(self) -> None:
        worker = self.worker
        t0 = time.perf_counter()
        worker.on_timers(self.clock)  # as the timer task does (it rests the layer too)
        self.busy += time.perf_counter() - t0

    def call(self, n: int) -> None:
        """INVITE → 100 + INVITE; 180, 200 → relayed; ACK, BYE → relayed; 200 → relayed."""
        uri = f"sip:service@{UAS[0]}:{UAS[1]}"
        out = self.feed(inbound(caller_request("INVITE", n, uri=uri, cseq=1, body=SDP), UAC))
        invite = next(data for data in out if data.startswith(b"INVITE"))
        tag = f"callee{n}"
        self.feed(inbound(callee_response(invite, 180, tag), UAS))
        ok = self.feed(inbound(callee_response(invite, 200, tag, SDP), UAS))
        assert ok and ok[0].startswith(b"SIP/2.0 200"), ok
        route = f"<sip:{ADVERTISE};lr>"
        contact = f"sip:service@{UAS[0]}:{UAS[1]};transport=UDP"
        acked = self.feed(inbound(caller_request("ACK", n, uri=contact, cseq=1, route=route, to_tag=tag), UAC))
        assert acked and acked[0].startswith(b"ACK"), acked
        bye = self.feed(inbound(caller_request("BYE", n, uri=contact, cseq=2, route=route, to_tag=tag), UAC))
        assert bye and bye[0].startswith(b"BYE"), bye
        done = self.feed(inbound(callee_response(bye[0], 200, tag), UAS))
        assert done and done[0].startswith(b"SIP/2.0 200"), done
        self.worker.links.outbox.sent.clear()
        self.clock += 1 / CALL_RATE
        if n % 50 == 0:
            self.timers()

    def run(self, calls: int, first: int = 0) -> float:
        """µs of worker CPU per call over ``calls`` calls."""
        self.busy = 0.0
        for n in range(first, first + calls):
            self.call(n)
        return self.busy / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one round, print the top 40")
    args = parser.parse_args()
    # As in a worker process (nodes/runner.py): long-lived objects frozen,
    # young-generation collections rare.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    bench = Bench()
    bench.run(500)  # warm caches, memo tables, code paths
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        bench.run(args.calls, 10_000)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
        return
    results = [bench.run(args.calls, 10_000 + r * args.calls) for r in range(args.rounds)]
    results.sort()
    median = results[len(results) // 2]
    live = len(bench.worker.transactions)
    print("| what | figure |")
    print("| --- | ---: |")
    print(f"| worker CPU per call (INVITE…BYE, 6 messages in, 7 out), median of {args.rounds} × {args.calls} | "
          f"{median:.1f} µs |")
    print(f"| best / worst round | {results[0]:.1f} / {results[-1]:.1f} µs |")
    print(f"| per inbound message | {median / 6:.1f} µs |")
    print(f"| calls/s one core could carry through the worker alone | {1e6 / median:,.0f} |")
    print(f"| transactions live at the end (reaped by timers on the simulated clock) | {live:,} |")
    print(f"\nPython {sys.version.split()[0]}, pid {os.getpid()}")


if __name__ == "__main__":
    main()
