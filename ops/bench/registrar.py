"""Registrations per second stored in etcd, with and without group commit.

    .venv/bin/python ops/bench/registrar.py [--registrations N] [--concurrency C] [--rounds R]

Starts its own local etcd (tests/support/etcd.py: loopback, no fsync) and
runs N REGISTERs for N distinct AORs through ``register()`` on one
``EtcdLocationStore``: a batched read, the §10.3 rules, a conditional write
(compare on the AOR's revision) with a bucket lease. C registrations are in
flight at once, as on a loaded worker. Requests are parsed beforehand
(``ops/bench/parse.py`` measures parsing). Rows:

- group commit: up to 128 AORs per etcd transaction, 2 ms collection window;
- batch size 1: every read and every write is its own etcd round trip;
- refresh: the same AORs registered again (compares now cover existing keys).

Each figure is the best of R rounds, each round under a fresh key prefix.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from cluster.registrar import register
from cluster.registrar.etcd_store import EtcdLocationStore
from cluster.sip import parse_message
from tests.support.etcd import EtcdServer

TARGET = 3000.0


def make_requests(n: int, cseq: int) -> list:
    out = []
    for i in range(n):
        data = (
            f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:5060;branch=z9hG4bK{i:x}r{cseq}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:user{i}@example.com>;tag={i:x}\r\n"
            f"To: <sip:user{i}@example.com>\r\n"
            f"Call-ID: {i:08x}-reg@10.0.0.1\r\n"
            f"CSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:user{i}@10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:5060;transport=udp>\r\n"
            f"Expires: 3600\r\n"
            f"User-Agent: bench/1.0\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()
        out.append(parse_message(data))
    return out


async def _round(server: EtcdServer, prefix: str, batches: list[list], concurrency: int,
                 max_batch: int) -> list[tuple[float, tuple[int, ...], set[int]]]:
    store = EtcdLocationStore(lambda: server.client(), prefix=prefix, max_batch=max_batch)
    results = []
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for requests in batches:
            statuses: set[int] = set()
            limit = trio.Semaphore(concurrency)
            now = time.time()
            before = _snapshot(store)
            start = time.perf_counter()
            async with trio.open_nursery() as inner:
                for request in requests:
                    inner.start_soon(_register_one, store, request, limit, statuses, now)
            elapsed = time.perf_counter() - start
            results.append((len(requests) / elapsed, _delta(before, _snapshot(store)), statuses))
        nursery.cancel_scope.cancel()
    store.close()
    return results


async def _register_one(store: EtcdLocationStore, request, limit: trio.Semaphore,
                        statuses: set[int], now: float) -> None:
    async with limit:
        statuses.add((await register(store, request, now=now)).status)


def _snapshot(store: EtcdLocationStore) -> tuple[int, int, int]:
    c = store.counters
    return c.commits, c.read_txns, c.conflicts


def _delta(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(y - x for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    first = make_requests(args.registrations, 1)
    refresh = make_requests(args.registrations, 2)
    best: dict[str, tuple[float, tuple, set]] = {}
    with EtcdServer(name="bench-registrar") as server:
        for r in range(args.rounds):
            for label, max_batch, batches in (
                ("group commit (≤128 AORs/txn)", 128, [first, refresh]),
                ("batch size 1", 1, [first]),
            ):
                rows = trio.run(functools.partial(_round, server, f"bench-{r}-{max_batch}", batches,
                                                  args.concurrency, max_batch))
                names = [label, f"{label}, refresh"] if len(rows) == 2 else [label]
                for name, row in zip(names, rows):
                    if name not in best or row[0] > best[name][0]:
                        best[name] = row
    print(f"Registrar → etcd, {args.registrations} REGISTERs, {args.concurrency} in flight, "
          f"best of {args.rounds}, local etcd (no fsync)\n")
    print("| mode | registrations/s | write txns | read txns | conflicts | statuses | target | met |")
    print("|---|---:|---:|---:|---:|---|---:|---|")
    for name, (rate, (commits, reads, conflicts), statuses) in best.items():
        met = "yes" if rate >= TARGET else "NO"
        print(f"| {name} | {rate:,.0f} | {commits:,} | {reads:,} | {conflicts} | "
              f"{','.join(map(str, sorted(statuses)))} | {TARGET:,.0f} | {met} |")


if __name__ == "__main__":
    main()
