"""Transaction-layer cost on one core (RFC 3261 §17).

    .venv/bin/python ops/bench/transactions.py [--transactions N] [--live L] [--rounds R]

Prints a markdown table of:
- server transactions created, answered and terminated per second: non-INVITE
  over UDP (request → 200 → Timer J) and TCP (request → 200, J = 0), INVITE
  over UDP rejected (INVITE → automatic 100 → 486 → ACK → Timer I) and
  accepted (INVITE → 100 → 200 → Timer L). Messages are parsed and the TU's
  responses built before the clock starts; the figure is the layer alone,
  best of R rounds, each round on fresh messages so no parse cache carries
  over;
- memory per live transaction with L live (tracemalloc): what the layer
  allocates — transaction, key, index, timer entries, the automatic 100 —
  with the messages it is handed (which the worker holds anyway) excluded;
- the cost of a timer tick that expires 100 transactions, and of one that
  expires none, with 1,000 and with L transactions alive: the heap makes it
  O(expired · log n), not O(live).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cluster.sip import Request, make_response, parse_message
from cluster.sip.transaction import Peer, TransactionLayer

UDP = Peer("UDP", "192.0.2.10", 5060)
TCP = Peer("TCP", "192.0.2.10", 5060, context=17)

TEMPLATE = (
    "{method} sip:bob@biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/{transport} pc33.atlanta.example.com:5060;branch=z9hG4bK{n:09x};rport\r\n"
    "Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds8;received=192.0.2.40\r\n"
    "Max-Forwards: 70\r\n"
    "To: Bob <sip:bob@biloxi.example.com>{to_tag}\r\n"
    "From: \"Alice\" <sip:alice@atlanta.example.com>;tag={n:010d}\r\n"
    "Call-ID: {n:014x}@pc33.atlanta.example.com\r\n"
    "CSeq: 314159 {method}\r\n"
    "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    "User-Agent: sipcluster-bench/1.0\r\n"
    "Content-Length: 0\r\n\r\n"
)


def parsed(method: str, n: int, transport: str = "UDP", to_tag: str = "") -> Request:
    data = TEMPLATE.format(method=method, n=n, transport=transport, to_tag=to_tag).encode()
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def pool(method: str, count: int, transport: str, status: int, base: int = 0):
    """Requests, the TU's responses to them and, for INVITE, the ACKs."""
    requests = [parsed(method, base + i, transport) for i in range(count)]
    responses = [make_response(r, status, to_tag=f"t{i}") for i, r in enumerate(requests)]
    acks = []
    if method == "INVITE" and status >= 300:
        acks = [parsed("ACK", base + i, transport, f";tag=t{i}") for i in range(count)]
    return requests, responses, acks


def run_server(method: str, transport: str, status: int, count: int) -> float:
    """Seconds to create, answer and terminate ``count`` server transactions."""
    requests, responses, acks = pool(method, count, transport, status)
    peer = TCP if transport == "TCP" else UDP
    layer = TransactionLayer()
    receive, send_response = layer.receive, layer.send_response
    gc.collect()
    start = time.perf_counter()
    now = 0.0
    for request, response in zip(requests, responses):
        receive(request, peer, now)
        send_response(response, now)
    for ack in acks:
        receive(ack, peer, now)
    layer.handle_timer(now + 40.0)  # Timers I, J, L
    elapsed = time.perf_counter() - start
    assert len(layer) == 0, len(layer)
    return elapsed


def server_rate(method, transport, status, count, rounds) -> float:
    return count / min(run_server(method, transport, status, count) for _ in range(rounds))


def _allocated_per_item(layer: TransactionLayer, items, feed) -> float:
    """Bytes ``layer`` allocates per item while ``feed(layer, item)`` runs."""
    items = list(items)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for item in items:
        feed(layer, item)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(layer) == len(items)
    return (after - before) / len(items)


def _answer(layer: TransactionLayer, pair) -> None:
    layer.receive(pair[0], UDP, 0.0)
    layer.send_response(pair[1], 0.0)


def memory_per_transaction(live: int) -> list[tuple[str, float]]:
    """Bytes the layer allocates per live transaction, messages excluded."""
    requests, responses, _ = pool("OPTIONS", live, "UDP", 200)
    results = [("non-INVITE server, Completed (Timer J armed)",
                _allocated_per_item(TransactionLayer(), zip(requests, responses), _answer))]
    del requests, responses
    invites = [parsed("INVITE", i) for i in range(live)]
    results.append(("INVITE server, Proceeding (100 Trying kept)", _allocated_per_item(
        TransactionLayer(), invites, lambda layer, r: layer.receive(r, UDP, 0.0))))
    # The same INVITEs, sent this time.
    results.append(("INVITE client, Calling (Timers A and B armed)", _allocated_per_item(
        TransactionLayer(), invites, lambda layer, r: layer.send_request(r, UDP, 0.0))))
    return results


def tick_cost(live: int, expiring: int = 100, trials: int = 20) -> tuple[float, float]:
    """Microseconds for a tick expiring ``expiring`` transactions, and for an
    empty tick, with ``live`` transactions whose timers are far off."""
    layer = TransactionLayer()
    requests, responses, _ = pool("OPTIONS", live, "UDP", 200)
    for request, response in zip(requests, responses):
        layer.receive(request, UDP, 0.0)  # Timer J due at 32 s
        layer.send_response(response, 0.0)
    batches = []
    for trial in range(trials):
        reqs, resps, _ = pool("OPTIONS", expiring, "UDP", 200, base=10**7 + trial * expiring)
        batches.append((reqs, resps))
    busy, idle = [], []
    for trial, (reqs, resps) in enumerate(batches):
        t = -31.0 + trial * 0.01  # their Timer J falls due at 1.0 + trial·0.01
        for request, response in zip(reqs, resps):
            layer.receive(request, UDP, t)
            layer.send_response(response, t)
        due = t + 32.0
        start = time.perf_counter()
        expired = layer.handle_timer(due)
        busy.append(time.perf_counter() - start)
        assert len(expired) == expiring
        start = time.perf_counter()
        assert layer.handle_timer(due + 0.001) == []
        idle.append(time.perf_counter() - start)
    assert len(layer) == live
    return min(busy) * 1e6, min(idle) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, rounds = args.transactions, args.rounds

    rows = [
        ("non-INVITE server, UDP (request, 200, Timer J)", server_rate("OPTIONS", "UDP", 200, n, rounds)),
        ("non-INVITE server, TCP (request, 200)", server_rate("OPTIONS", "TCP", 200, n, rounds)),
        ("INVITE server, UDP (INVITE, 100, 486, ACK, Timer I)", server_rate("INVITE", "UDP", 486, n, rounds)),
        ("INVITE server, UDP (INVITE, 100, 200, Timer L)", server_rate("INVITE", "UDP", 200, n, rounds)),
    ]
    print(f"Transaction layer, one core, Python {sys.version.split()[0]}\n")
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:,.0f} transactions/s |")
    for name, size in memory_per_transaction(args.live):
        print(f"| memory per live transaction, {args.live:,} live: {name} | {size:,.0f} B |")
    for live in (1_000, args.live):
        busy, idle = tick_cost(live)
        print(f"| timer tick expiring 100 transactions, {live:,} live | {busy:,.0f} µs |")
        print(f"| timer tick expiring none, {live:,} live | {idle:,.1f} µs |")


if __name__ == "__main__":
    main()
