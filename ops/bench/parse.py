"""Message-layer throughput on one core, side by side with sipmessage (PyPI).

    .venv/bin/python ops/bench/parse.py [--messages N] [--rounds R]

Prints a markdown table of messages/s for:
- full parse of a ~900-byte INVITE with SDP plus reading the top Via branch,
  From tag, To, CSeq and Call-ID. Every message in the pool is distinct
  (Call-ID, tags, branch, user and host differ), so URI caches do not flatter
  the figure;
- ``extract_call_id`` (the edge's fast path);
- serialising a modified message (a Via pushed, Max-Forwards decremented).
Each figure is the best of R rounds over the pool.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cluster.sip import extract_call_id, parse_message
from tests.sip.samples import INVITE

try:
    import sipmessage
except ImportError:  # pragma: no cover - optional peer
    sipmessage = None  # type: ignore[assignment]  # the peer is optional


def make_pool(n: int) -> list[bytes]:
    pool = []
    for i in range(n):
        data = (
            INVITE.replace(b"a84b4c76e66710", b"%014x" % (0xA84B4C76E66710 + i))
            .replace(b"1928301774", b"%010d" % (1928301774 + i))
            .replace(b"z9hG4bK776asdhds", b"z9hG4bK%09x" % i)
            .replace(b"sip:bob@biloxi", b"sip:bob%d@biloxi%d" % (i, i % 97))
            .replace(b"<sip:bob@biloxi", b"<sip:bob%d@biloxi%d" % (i, i % 97))
        )
        pool.append(data)
    return pool


def rate(fn, items, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn(items)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def ours_parse(pool):
    for data in pool:
        m = parse_message(data)
        m.via.branch
        m.from_.tag
        m.to.uri
        m.cseq.seq
        m.call_id


def ours_extract(pool):
    for data in pool:
        extract_call_id(data)


def ours_serialise(messages):
    for m in messages:
        m = m.copy()
        m.push_via("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKproxy")
        m.set("Max-Forwards", m.max_forwards - 1)
        m.to_bytes()


def peer_parse(pool):
    parse = sipmessage.Message.parse
    for data in pool:
        m = parse(data)
        m.via[0].parameters.get("branch")
        m.from_address.parameters.get("tag")
        m.to_address.uri
        m.cseq.sequence
        m.call_id


def peer_extract(pool):
    parse = sipmessage.Message.parse
    for data in pool:
        parse(data).call_id


def peer_serialise(messages):
    for m in messages:
        vias = [sipmessage.Via.parse("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKproxy")] + m.via
        m.via = vias
        m.max_forwards = m.max_forwards - 1
        bytes(m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pool = make_pool(args.messages)
    rows = []
    same = [pool[0]] * len(pool)
    ours = {
        "full parse + read Via/From/To/CSeq/Call-ID": rate(ours_parse, pool, args.rounds),
        "full parse, one message repeated (URI cache warm)": rate(ours_parse, same, args.rounds),
        "Call-ID extraction": rate(ours_extract, pool, args.rounds),
        "serialise a modified message": rate(ours_serialise, [parse_message(d) for d in pool], args.rounds),
    }
    peer = {}
    if sipmessage is not None:
        small = pool[: max(1, len(pool) // 4)]
        peer = {
            "full parse + read Via/From/To/CSeq/Call-ID": rate(peer_parse, small, args.rounds),
            "full parse, one message repeated (URI cache warm)": rate(
                peer_parse, [pool[0]] * len(small), args.rounds),
            "Call-ID extraction": rate(peer_extract, small, args.rounds),
            "serialise a modified message": rate(
                peer_serialise, [sipmessage.Message.parse(d) for d in small], 1),
        }
    targets = {"full parse + read Via/From/To/CSeq/Call-ID": 50_000,
               "full parse, one message repeated (URI cache warm)": 50_000,
               "Call-ID extraction": 1_000_000}
    print(f"Message layer, one core, {len(pool)} distinct {len(pool[0])}-byte INVITEs, best of {args.rounds}")
    print()
    print("| operation | sipcluster msgs/s | sipmessage msgs/s | ratio | target | met |")
    print("|---|---:|---:|---:|---:|---|")
    for name, value in ours.items():
        other = peer.get(name)
        ratio = f"{value / other:.1f}x" if other else "n/a"
        target = targets.get(name)
        met = "n/a" if target is None else ("yes" if value >= target else "NO")
        rows.append(name)
        print(f"| {name} | {value:,.0f} | {other:,.0f} | {ratio} | "
              f"{'' if target is None else f'{target:,}'} | {met} |" if other else
              f"| {name} | {value:,.0f} | n/a | n/a | {target or ''} | {met} |")
    print()
    print("sipmessage has no Call-ID fast path; its row is a full parse reading Call-ID.")


if __name__ == "__main__":
    main()
