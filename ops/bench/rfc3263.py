"""RFC 3263 location in the worker: resolutions per second and event-loop lag.

    .venv/bin/python ops/bench/rfc3263.py [--quick]

Prints a markdown table with:
- locations/s of ``sip:carol@carrier.test`` (NAPTR -> SRV -> two targets'
  A and AAAA: 6 lookups) through ``nodes.worker.resolver.Resolver`` against
  a dnsmasq on a loopback port: cached (a warm cache, as for a carrier
  called all day) and uncached (a fresh cache each time, every lookup sent);
- the event loop's lag while the DNS server is silent: the transaction user
  and the resolver on one trio loop, as in a worker, receive INVITEs for
  distinct names at a steady rate (each lookup waits for its timeout), while
  a task sleeping 1 ms records how late each tick wakes; the target is no
  tick later than 5 ms. On a shared machine the wall-clock lateness mostly
  measures the scheduler (the same ticker on an idle loop is printed beside
  it), so the CPU time of each task step — how long this loop's own code
  holds the loop — is printed too;
  The garbage collector's pauses (the worker's policy, ``nodes.collector``)
  are timed apart, and the CPU of each step without them is printed: what
  the DNS path itself holds the loop for;
- the cost of a destination-set choice per call is ``ops/bench/dispatch.py``'s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import trio
import trio.abc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cluster.config import DnsConfig  # noqa: E402
from cluster.dns.cache import DnsCache  # noqa: E402
from cluster.dns.rfc3263 import Target  # noqa: E402
from nodes.worker.resolver import Resolver, serve  # noqa: E402
from tests.support.dns import Dnsmasq, FakeDns  # noqa: E402

RECORDS = [
    "local-ttl=3600",
    "naptr-record=carrier.test,10,10,s,SIP+D2U,,_sip._udp.carrier.test",
    "srv-host=_sip._udp.carrier.test,uas1.carrier.test,5071,0,50",
    "srv-host=_sip._udp.carrier.test,uas2.carrier.test,5072,0,50",
    "host-record=uas1.carrier.test,127.0.0.1",
    "host-record=uas2.carrier.test,127.0.0.2",
]


def locations_per_second(server: str, count: int, *, cached: bool) -> tuple[float, int]:
    resolver = Resolver(DnsConfig(servers=(server,), timeout=1.0, lifetime=2.0))

    async def main() -> float:
        await resolver.locate(Target("carrier.test"), 0)
        start = time.perf_counter()
        for seed in range(count):
            if not cached:
                resolver.cache = DnsCache(resolver.cache.limits)
            location = await resolver.locate(Target("carrier.test"), seed)
            assert len(location.destinations) == 2, location
        return time.perf_counter() - start
    took = trio.run(main)
    return count / took, resolver.stats["dns_queries"]


def lateness(late: list[float]) -> dict[str, float]:
    ordered = sorted(late)
    return {"ticks": len(ordered), "p50": statistics.median(ordered) * 1000,
            "p99": ordered[int(len(ordered) * 0.99)] * 1000, "max": ordered[-1] * 1000,
            "over5": sum(1 for v in ordered if v > 0.005)}


async def ticker(late: list[float], busy: list[float] | None = None) -> None:
    """Sleep 1 ms again and again; record how late each wake-up is, and
    (``busy``) the CPU time this thread spent between falling asleep and
    waking: the lateness the loop's own work can cause, whatever the
    scheduler does to the process."""
    while True:
        before, cpu = time.perf_counter(), time.thread_time()
        await trio.sleep(0.001)
        late.append(time.perf_counter() - before - 0.001)
        if busy is not None:
            busy.append(time.thread_time() - cpu)


class StepCpu(trio.abc.Instrument):
    """The CPU time of each task step (thread time, so the machine's other
    processes do not count): what this loop itself holds the loop for; and
    the same without the garbage collector's pauses that fell in the step
    (``gc.callbacks``): the DNS path's own work."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.own: list[float] = []
        self.collections: list[float] = []
        self._start = self._collecting = 0.0
        self._collected = self._gc_at_start = 0.0

    def collector(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._collecting = time.thread_time()
        else:
            took = time.thread_time() - self._collecting
            self.collections.append(took)
            self._collected += took

    def before_task_step(self, task) -> None:
        self._start = time.thread_time()
        self._gc_at_start = self._collected

    def after_task_step(self, task) -> None:
        took = time.thread_time() - self._start
        self.steps.append(took)
        self.own.append(took - (self._collected - self._gc_at_start))


def loop_lag_idle(seconds: float) -> dict[str, float]:
    """The same ticker with nothing else on the loop: the machine's own noise."""
    late: list[float] = []

    async def main() -> None:
        with trio.move_on_after(seconds):
            await ticker(late)
    trio.run(main)
    return lateness(late)


def loop_lag_while_silent(seconds: float, rate: float) -> dict[str, float]:
    from cluster.app.api import Application
    from cluster.tu.outputs import Resolve
    from tests.tu.support import CALLER, make_tu, request
    app = Application("to-the-request-uri")

    @app.request("INVITE")
    def route(call):
        return call.proxy([call.request.uri])
    fake = FakeDns("silent").start()
    resolver = Resolver(DnsConfig(servers=(fake.server,), timeout=0.5, lifetime=1.0))
    tu = make_tu(app)
    late: list[float] = []
    busy: list[float] = []
    answered = [0]

    async def main() -> None:
        def deliver(ticket, location, scope) -> None:
            answered[0] += len(tu.resolved(ticket, location, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker, late, busy)
            # The lookups' own nursery ends when the last one has answered.
            async with trio.open_nursery() as lookups:
                for n in range(int(seconds * rate)):
                    invite = request(uri=f"sip:carol@h{n}.silent.test", call_id=f"lag-{n}",
                                     branch=f"z9hG4bK-lag-{n}")
                    for output in tu.receive(invite, CALLER, trio.current_time()):
                        if isinstance(output, Resolve):
                            lookups.start_soon(serve, resolver, output.ticket, output.target, output.seed,
                                               deliver)
                    await trio.sleep(1.0 / rate)
            nursery.cancel_scope.cancel()
    cpu = StepCpu()
    # The worker's garbage collector policy (nodes.collector), as a node
    # runs under: the default policy's older-generation pauses are not DNS.
    from nodes.collector import Collector
    collector = Collector()
    collector.install()
    import gc
    gc.callbacks.append(cpu.collector)
    try:
        trio.run(main, instruments=[cpu])
    finally:
        gc.callbacks.remove(cpu.collector)
        collector.uninstall()
        fake.close()
    steps, own = sorted(cpu.steps), sorted(cpu.own)
    return {**lateness(late), "timeouts": resolver.stats["dns_lookup_timeout"],
            "step_max": steps[-1] * 1000, "step_p99": steps[int(len(steps) * 0.99)] * 1000,
            "steps_over5": sum(1 for v in steps if v > 0.005), "steps": len(steps),
            "own_max": own[-1] * 1000, "own_p99": own[int(len(own) * 0.99)] * 1000,
            "own_over5": sum(1 for v in own if v > 0.005),
            "busy_p99": sorted(busy)[int(len(busy) * 0.99)] * 1000, "busy_max": max(busy) * 1000,
            "busy_over5": sum(1 for v in busy if v > 0.005),
            "gc_runs": len(cpu.collections), "gc_max": max(cpu.collections, default=0.0) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny numbers: a smoke test, not a measurement")
    args = parser.parse_args(argv)
    count, uncached_count, seconds, rate = (200, 20, 2.0, 50.0) if args.quick else (20000, 500, 10.0, 200.0)
    server = Dnsmasq(RECORDS).start()
    try:
        cached, _ = locations_per_second(server.server, count, cached=True)
        uncached, queries = locations_per_second(server.server, uncached_count, cached=False)
    finally:
        server.close()
    idle = loop_lag_idle(seconds)
    lag = loop_lag_while_silent(seconds, rate)
    print("| measurement | value |")
    print("| --- | --- |")
    print(f"| Locations/s, cached (carrier.test: NAPTR, SRV, 2 targets) | {cached:,.0f} |")
    print(f"| Locations/s, uncached (6 lookups each to dnsmasq) | {uncached:,.0f} |")
    print(f"| DNS queries sent, uncached run | {queries:,} |")
    print(f"| Event-loop tick lateness while DNS is silent, p50 / p99 / max (ms) "
          f"| {lag['p50']:.2f} / {lag['p99']:.2f} / {lag['max']:.2f} |")
    print(f"| The same ticker on an idle loop (machine noise), p50 / p99 / max (ms) "
          f"| {idle['p50']:.2f} / {idle['p99']:.2f} / {idle['max']:.2f} |")
    print(f"| Idle-loop ticks later than 5 ms (of {idle['ticks']:,}) | {idle['over5']:,} |")
    print(f"| Ticks later than 5 ms (of {lag['ticks']:,}; {rate:.0f} new names/s for {seconds:.0f} s, "
          f"{lag['timeouts']:,} lookups timed out) | {lag['over5']:,} |")
    print(f"| CPU time of one task step on that loop, p99 / max (ms) "
          f"| {lag['step_p99']:.2f} / {lag['step_max']:.2f} |")
    print(f"| Task steps holding the loop over 5 ms of CPU (of {lag['steps']:,}) | {lag['steps_over5']:,} |")
    print(f"| The same without garbage-collector pauses (the DNS path's own work), p99 / max (ms) "
          f"| {lag['own_p99']:.2f} / {lag['own_max']:.2f} |")
    print(f"| Task steps over 5 ms of CPU without collector pauses | {lag['own_over5']:,} |")
    print(f"| CPU the loop spent between a tick's sleep and its wake-up, p99 / max (ms) "
          f"| {lag['busy_p99']:.2f} / {lag['busy_max']:.2f} |")
    print(f"| Ticks the loop's own CPU made later than 5 ms (collector included) | {lag['busy_over5']:,} |")
    print(f"| Collector pauses on that loop: count, longest (ms CPU) | {lag['gc_runs']:,}, {lag['gc_max']:.2f} |")
    print("| Destination-set choice per call | ops/bench/dispatch.py |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
