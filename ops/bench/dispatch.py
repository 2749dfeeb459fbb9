"""The cost of a destination-set choice per call, on one core.

    .venv/bin/python ops/bench/dispatch.py [--calls N] [--rounds R] [--members 2,8,32]

For each policy and set size, ``Dispatcher.choose`` (what the transaction
user asks once per call that proxies to a set: the members that are up, in
the policy's order) over N distinct Call-IDs, with a quarter of the members
down; ``least-calls`` with active calls counted on every member. Prints a
markdown table of microseconds per choice (best of R rounds) and choices/s.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cluster.dispatch import POLICIES, DestinationSet, Dispatcher, HealthRecord, Member


def dispatcher(policy: str, size: int) -> Dispatcher:
    d = Dispatcher(rng=random.Random(1))
    members = tuple(Member.make(f"sip:gw{i}.carrier.example:5060", priority=i % 3, weight=1 + i % 5)
                    for i in range(size))
    d.put_set(DestinationSet.make("carriers", policy, members))
    for m in members[: size // 4]:
        d.put_health(("carriers", m.uri), HealthRecord(False))
    for n, m in enumerate(members):
        for k in range(n % 7):
            d.active.begin(f"busy-{n}-{k}", ("carriers", m.uri), 0.0)
    return d


def per_choice(policy: str, size: int, call_ids: list[str], rounds: int) -> float:
    d = dispatcher(policy, size)
    choose = d.choose
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for call_id in call_ids:
            choose("carriers", call_id)
        best = min(best, time.perf_counter() - start)
    return best / len(call_ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--members", default="2,8,32")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.members.split(",")]
    call_ids = [f"{random.getrandbits(64):016x}@192.0.2.{i % 250}" for i in range(args.calls)]
    print("| policy | " + " | ".join(f"{s} members: us/choice (choices/s)" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for policy in POLICIES:
        cells = []
        for size in sizes:
            seconds = per_choice(policy, size, call_ids, args.rounds)
            cells.append(f"{seconds * 1e6:.2f} ({1 / seconds:,.0f})")
        print(f"| {policy} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
