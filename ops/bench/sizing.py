#!/usr/bin/env python3
"""Capacity of N edges × M workers on paper, from per-process measurements (issue 21 point 6).

    .venv/bin/python ops/bench/sizing.py --edge-us 60 --worker-us 900 --etcd-us 20 \\
        --messages-per-call 13 --etcd-writes 8000 --plot ops/guide/sizing.png
    .venv/bin/python ops/bench/sizing.py ... --check 1:1:1275:1 --check 1:2:2630:2:sipp --sipp-us 250

The model (``ops/guide/sizing.md`` explains it and where its inputs come from):

- each edge and each worker is one event loop on one core of its own (the
  chart's ``cpu: 1``), so an edge forwards ``1e6 / edge_us`` messages/s and a
  worker carries ``1e6 / worker_us`` calls/s;
- the ring (``cluster.sharding.ring``, the real one, asked for the owners of
  sampled Call-IDs) gives the busiest worker a share above 1/M: the cluster
  saturates when that worker does;
- edges share the traffic evenly (``--edge-skew`` for an uneven DNS or load
  balancer spread), each message costs the edge ``edge_us`` and its NIC
  ``--message-bytes`` (``--nic-gbps`` per edge);
- every REGISTER that changes a binding is an etcd write; etcd takes
  ``--etcd-writes`` of them a second (``ops/bench/registrar.py``), whatever
  M and N;
- ``--check N:M:CALLS:CORES[:sipp]`` compares the model with a measured
  point; when the cluster's processes shared CORES cores in that run (as the
  benchmarks on a small machine do), the model there is ``cores ÷ CPU per
  call`` (edge + workers + etcd, + the load generator's ``--sipp-us`` when
  ``:sipp`` says SIPp shared them) if that is lower.

It prints a markdown table (calls/s and the saturating layer for each N and
M), the registrations/s ceiling and the checks; ``--plot`` draws the table.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cluster.sharding.ring import Ring  # the repository root is on the path above

SAMPLES = 40_000


@dataclass(frozen=True, slots=True)
class Inputs:
    edge_us: float
    """Edge CPU per message it handles (forwarded to a worker or sent out), µs."""
    worker_us: float
    """Worker CPU per call, µs (one worker's own calls)."""
    messages_per_call: float
    """Messages an edge handles per call (compare.py's note: forwarded + sent)."""
    etcd_writes: float
    """Registrations stored in etcd per second (ops/bench/registrar.py)."""
    etcd_us: float = 0.0
    """etcd CPU per call, µs (shared-core checks only)."""
    message_bytes: float = 900.0
    nic_gbps: float = 1.0
    edge_skew: float = 1.0
    """Busiest edge's share of the traffic ÷ an even share (1: even)."""
    messages_per_registration: float = 2.0
    """REGISTER in, 200 out."""
    worker_register_us: float | None = None
    """Worker CPU per registration, µs; None: not a limit in the model."""

    def __post_init__(self) -> None:
        for name in ("edge_us", "worker_us", "messages_per_call", "etcd_writes", "message_bytes", "nic_gbps",
                     "messages_per_registration"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.edge_skew < 1 or self.etcd_us < 0:
            raise ValueError("edge_skew must be at least 1 and etcd_us not negative")


def ring_skew(workers: int, samples: int = SAMPLES) -> float:
    """The busiest worker's share of the Call-IDs ÷ 1/M, on the real ring
    with the names ``sipcluster up`` gives its workers."""
    if workers < 1:
        raise ValueError("at least one worker")
    ring = Ring([f"worker-{i}" for i in range(1, workers + 1)])
    owners = Counter(ring.owner(f"{n:08x}@sizing.invalid".encode()) for n in range(samples))
    return max(owners.values()) / (samples / workers)


@dataclass(frozen=True, slots=True)
class Capacity:
    edges: int
    workers: int
    calls: float
    """Calls/s the cluster carries: the lowest of the limits."""
    limits: dict[str, float]
    """Calls/s at which each layer saturates."""

    @property
    def bottleneck(self) -> str:
        return min(self.limits, key=lambda k: self.limits[k])


def capacity(inputs: Inputs, edges: int, workers: int, skew: float | None = None) -> Capacity:
    """Calls/s of ``edges`` × ``workers``, each on a core of its own."""
    if edges < 1 or workers < 1:
        raise ValueError("at least one edge and one worker")
    skew = ring_skew(workers) if skew is None else skew
    per_edge_msgs = 1e6 / inputs.edge_us
    nic_msgs = inputs.nic_gbps * 1e9 / 8 / inputs.message_bytes
    limits = {
        "edge CPU": edges * per_edge_msgs / inputs.messages_per_call / inputs.edge_skew,
        "edge NIC": edges * nic_msgs / inputs.messages_per_call / inputs.edge_skew,
        "workers (ring)": workers * (1e6 / inputs.worker_us) / skew,
    }
    return Capacity(edges, workers, min(limits.values()), limits)


def registrations(inputs: Inputs, edges: int, workers: int, skew: float | None = None) -> tuple[float, str]:
    """Registrations/s stored and the layer that holds it there."""
    limits = {"etcd writes": inputs.etcd_writes,
              "edge CPU": edges * 1e6 / inputs.edge_us / inputs.messages_per_registration / inputs.edge_skew}
    if inputs.worker_register_us:
        limits["workers (ring)"] = workers * 1e6 / inputs.worker_register_us / (
            ring_skew(workers) if skew is None else skew)
    name = min(limits, key=lambda k: limits[k])
    return limits[name], name


def shared_cores(inputs: Inputs, workers: int, cores: float, sipp_us: float) -> float:
    """Calls/s when every process (one edge, ``workers``, etcd, SIPp) shares
    ``cores``: the cores ÷ the CPU per call of all of them."""
    per_call_us = inputs.edge_us * inputs.messages_per_call + inputs.worker_us + inputs.etcd_us + sipp_us
    return cores * 1e6 / per_call_us


def check(inputs: Inputs, edges: int, workers: int, measured: float, cores: float | None,
          sipp_us: float) -> tuple[float, float, str]:
    """The model's calls/s for a measured point, model ÷ measured, and which
    limit applied; ``cores``: the cores every process of that run shared
    (None: each had its own), ``sipp_us``: the load generator's CPU per call
    when it shared them too (0 when it ran elsewhere)."""
    own = capacity(inputs, edges, workers)
    model, why = own.calls, own.bottleneck
    if cores is not None:
        shared = shared_cores(inputs, workers, cores, sipp_us)
        if shared < model:
            model, why = shared, f"{cores:g} shared core{'s' * (cores != 1)}{' with SIPp' * bool(sipp_us)}"
    return model, model / measured, why


def table(inputs: Inputs, edges: Sequence[int], workers: Sequence[int]) -> tuple[str, dict[tuple[int, int], Capacity]]:
    skews = {m: ring_skew(m) for m in workers}
    results = {(n, m): capacity(inputs, n, m, skews[m]) for n in edges for m in workers}
    lines = ["| edges \\ workers | " + " | ".join(str(m) for m in workers) + " |",
             "|---" * (len(workers) + 1) + "|"]
    for n in edges:
        lines.append(f"| {n} | " + " | ".join(
            f"{results[n, m].calls:,.0f} ({results[n, m].bottleneck})" for m in workers) + " |")
    lines.append("| ring skew (busiest ÷ even share) | " + " | ".join(f"{skews[m]:.3f}" for m in workers) + " |")
    return "\n".join(lines), results


def plot(results: dict[tuple[int, int], Capacity], inputs: Inputs, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = sorted({n for n, _ in results})
    workers = sorted({m for _, m in results})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in edges:
        ax.plot(workers, [results[n, m].calls for m in workers], marker="o", label=f"{n} edge{'s' * (n > 1)}")
    ax.plot(workers, [m * 1e6 / inputs.worker_us for m in workers], linestyle=":", color="grey",
            label="workers alone, even ring")
    ax.set_xlabel("workers (one core each)")
    ax.set_ylabel("calls/s")
    ax.set_title("sipcluster capacity on paper (ops/bench/sizing.py)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass(frozen=True, slots=True)
class Point:
    """A measured point: EDGES:WORKERS:CALLS_PER_S[:SHARED_CORES[:sipp]]."""
    edges: int
    workers: int
    calls: float
    cores: float | None = None
    """The cores all the cluster's processes shared in that run (None: one each)."""
    with_sipp: bool = False
    """Whether SIPp ran on those cores too."""


def parse_point(text: str) -> Point:
    parts = text.split(":")
    if len(parts) not in (3, 4, 5) or (len(parts) == 5 and parts[4] != "sipp"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected EDGES:WORKERS:CALLS_PER_S[:SHARED_CORES[:sipp]]")
    try:
        point = Point(int(parts[0]), int(parts[1]), float(parts[2]),
                      float(parts[3]) if len(parts) >= 4 else None, len(parts) == 5)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    if point.edges < 1 or point.workers < 1 or point.calls <= 0 or (point.cores is not None and point.cores <= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: every figure must be positive")
    return point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge-us", type=float, required=True, help="edge CPU µs per message")
    parser.add_argument("--worker-us", type=float, required=True, help="worker CPU µs per call")
    parser.add_argument("--etcd-us", type=float, default=0.0, help="etcd CPU µs per call (shared-core checks)")
    parser.add_argument("--messages-per-call", type=float, required=True, help="edge messages per call")
    parser.add_argument("--etcd-writes", type=float, required=True, help="registrations stored in etcd per s")
    parser.add_argument("--worker-register-us", type=float, default=None, help="worker CPU µs per registration")
    parser.add_argument("--message-bytes", type=float, default=900.0, help="mean SIP message size (default 900)")
    parser.add_argument("--nic-gbps", type=float, default=1.0, help="one edge's NIC (default 1 Gbit/s)")
    parser.add_argument("--edge-skew", type=float, default=1.0, help="busiest edge ÷ even share (default 1)")
    parser.add_argument("--edges", type=int, nargs="+", default=[1, 2, 4], help="edge counts (default 1 2 4)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                        help="worker counts (default 1 2 4 8 16 32)")
    parser.add_argument("--check", type=parse_point, action="append", default=[],
                        metavar="N:M:CALLS[:CORES[:sipp]]",
                        help="a measured point to compare with the model; CORES: the cores all the "
                             "cluster's processes shared, ':sipp' when SIPp shared them too")
    parser.add_argument("--sipp-us", type=float, default=0.0,
                        help="SIPp's CPU µs per call, caller and callee (checks marked :sipp)")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of the table here")
    args = parser.parse_args(argv)
    if any(n < 1 or n > 64 for n in args.edges) or any(m < 1 or m > 256 for m in args.workers):
        parser.error("edges in [1, 64] and workers in [1, 256]")
    try:
        inputs = Inputs(args.edge_us, args.worker_us, args.messages_per_call, args.etcd_writes, args.etcd_us,
                        args.message_bytes, args.nic_gbps, args.edge_skew,
                        worker_register_us=args.worker_register_us)
    except ValueError as error:
        parser.error(str(error))
    text, results = table(inputs, args.edges, args.workers)
    print("Calls/s (saturating layer), each edge and worker on a core of its own:\n")
    print(text)
    regs = {n: registrations(inputs, n, max(args.workers)) for n in args.edges}
    print("\nRegistrations/s stored: " + "; ".join(f"{n} edge{'s' * (n > 1)}: {v:,.0f} ({why})"
                                                for n, (v, why) in regs.items()))
    for point in args.check:
        model, ratio, why = check(inputs, point.edges, point.workers, point.calls, point.cores,
                                  args.sipp_us if point.with_sipp else 0.0)
        print(f"Check {point.edges} edge × {point.workers} worker: model {model:,.0f} calls/s ({why}), "
              f"measured {point.calls:,.0f}: model ÷ measured {ratio:.2f}")
    if args.plot:
        plot(results, inputs, args.plot)
        print(f"\nPlot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
