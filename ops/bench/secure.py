"""TLS and WSS at the edge: what a connection costs (issue 20.7).

    .venv/bin/python ops/bench/secure.py [--quick] [--idle N] [--hold SECONDS]

An edge's TLS and WSS transports (``nodes/edge/tls.py``, ``ws.py``) run in a
child process with the real forwarder and no worker ring, so every request is
read, framed, has its Call-ID extracted and is answered 503 on its connection
(one message in, one out). Clients run in this process (trio, the ssl module
and wsproto); certificates come from a test CA made for the run; everything is
on loopback. The edge's CPU time is read from /proc, so "per edge core" is
work divided by the edge process's CPU seconds, whatever else the machine
runs. Prints one markdown table:

- TLS handshakes/s per edge core: new connections, full handshake (TLS 1.3,
  ECDHE P-256, the client checks the certificate), then closed;
- WSS messages/s per edge core: SIP requests in WebSocket frames on four
  connections, pipelined, each answered in a frame;
- memory per idle TLS and per idle WSS connection: the edge's RSS growth over
  N connections (each made, then one CRLF keep-alive answered so the edge
  holds it in its table), against Kamailio's published ~61 KB per TLS
  connection;
- one edge holding 10,000 idle TLS connections for ``--hold`` seconds while
  every connection sends an RFC 5626 CRLF keep-alive every 10 s: how many
  stayed up and were answered, the edge's RSS and CPU.
RLIMIT_NOFILE is raised to its hard limit in both processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

KAMAILIO_TLS_KB = 61
KEEPALIVE_EVERY = 10.0


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# -- the edge (child process) ---------------------------------------------------

def serve(cert: str, key: str) -> None:
    """Run the TLS and WSS transports until standard input closes."""
    import trio

    from cluster.config import load_config
    from nodes.edge.forwarder import Forwarder
    from nodes.edge.tls import TlsContexts, TlsTransport
    from nodes.edge.ws import WsTransport

    raise_nofile(30000)
    edge = load_config(None, env={}, overrides={
        "edge.listen": ["tls:127.0.0.1:5061", "wss:127.0.0.1:8443"], "edge.tls_cert": cert,
        "edge.tls_key": key}).edge
    # No ring: every request is answered at the edge, the outbox never used.
    forwarder = Forwarder("edge-bench", None, max_message=edge.max_message, server="bench")  # type: ignore[arg-type]
    contexts = TlsContexts(edge, forwarder.stats)
    # Every client is on 127.0.0.1: no per-source limit (edge.max_connections_per_source).
    common = dict(idle_timeout=600.0, max_connections=25000, handshake_timeout=120.0, per_source=25000)
    tls = TlsTransport(forwarder, contexts, **common)  # type: ignore[arg-type]
    wss = WsTransport(forwarder, contexts=contexts, origins=(), ping_interval=600.0,
                      **common)  # type: ignore[arg-type]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(tls.run, [("127.0.0.1", 0)])
            await nursery.start(wss.run, [("127.0.0.1", 0)])
            print(json.dumps({"tls": tls.locals[0][1], "wss": wss.locals[0][1]}), flush=True)
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()
    trio.run(main)


class Edge:
    def __init__(self, cert: Path, key: Path) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", str(cert), str(key)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.process.stdout is not None
        ports = json.loads(self.process.stdout.readline())
        self.tls_port, self.wss_port = ports["tls"], ports["wss"]

    def cpu(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- clients (this process) -------------------------------------------------------

def options(n: int) -> bytes:
    return (f"OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS bench.invalid;branch=z9hG4bK{n:x}\r\n"
            f"Max-Forwards: 70\r\nTo: <sip:edge@127.0.0.1>\r\nFrom: <sip:b@127.0.0.1>;tag=b\r\n"
            f"Call-ID: bench-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


async def tls_open(port: int, context: ssl.SSLContext):
    import trio
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(stream, context, server_hostname="localhost", https_compatible=True)
    await tls.do_handshake()
    return tls


async def wss_open(port: int, context: ssl.SSLContext):
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request
    tls = await tls_open(port, context)
    ws = WSConnection(ConnectionType.CLIENT)
    await tls.send_all(ws.send(Request(host="localhost", target="/", subprotocols=["sip"])))
    while True:
        ws.receive_data(await tls.receive_some(65536))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            return tls, ws


async def handshakes(edge: Edge, context: ssl.SSLContext, seconds: float, concurrency: int) -> tuple[int, float]:
    import trio
    done = 0
    start_cpu = edge.cpu()

    async def loop() -> None:
        nonlocal done
        while True:
            tls = await tls_open(edge.tls_port, context)
            done += 1
            await trio.aclose_forcefully(tls)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(loop)
    return done, edge.cpu() - start_cpu


async def wss_messages(edge: Edge, context: ssl.SSLContext, seconds: float, connections: int,
                       window: int = 64) -> tuple[int, float]:
    import trio
    from wsproto.events import TextMessage
    answered = 0

    async def one(index: int) -> None:
        nonlocal answered
        tls, ws = await wss_open(edge.wss_port, context)
        outstanding = 0
        n = index << 32
        while True:
            while outstanding < window:
                n += 1
                await tls.send_all(ws.send(TextMessage(options(n).decode())))
                outstanding += 1
            ws.receive_data(await tls.receive_some(65536))
            for event in ws.events():
                if isinstance(event, TextMessage) and event.message_finished:
                    outstanding -= 1
                    answered += 1

    start_cpu = edge.cpu()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(one, i)
    return answered, edge.cpu() - start_cpu


async def open_idle(edge: Edge, context: ssl.SSLContext, count: int, kind: str, held: list,
                    concurrency: int = 100) -> int:
    """Open ``count`` connections (kept in ``held``), each answered one CRLF
    keep-alive; returns how many failed."""
    import trio
    from wsproto.events import TextMessage
    from wsproto.utilities import LocalProtocolError, RemoteProtocolError
    failed = 0
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        nonlocal failed
        async with limiter:
            try:
                with trio.fail_after(120):
                    if kind == "tls":
                        tls = await tls_open(edge.tls_port, context)
                        await tls.send_all(b"\r\n\r\n")
                        assert await tls.receive_some(16) == b"\r\n"
                        held.append((tls, None))
                    else:
                        tls, ws = await wss_open(edge.wss_port, context)
                        await tls.send_all(ws.send(TextMessage("\r\n\r\n")))
                        ws.receive_data(await tls.receive_some(64))
                        assert [e.data for e in ws.events() if isinstance(e, TextMessage)] == ["\r\n"]
                        held.append((tls, ws))
            except (OSError, AssertionError, trio.BrokenResourceError, trio.TooSlowError,
                    RemoteProtocolError, LocalProtocolError):
                failed += 1

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return failed


async def close_all(held: list) -> None:
    import trio
    for tls, _ in held:
        await trio.aclose_forcefully(tls)
    held.clear()


async def keepalives(held: list, seconds: float) -> tuple[int, int]:
    """Every connection sends CRLF CRLF every KEEPALIVE_EVERY seconds
    (spread over the interval) for ``seconds``; returns (answered, failed)."""
    import trio
    answered = failed = 0

    async def one(tls, offset: float) -> None:
        nonlocal answered, failed
        await trio.sleep(offset)
        while True:
            try:
                with trio.fail_after(30):
                    await tls.send_all(b"\r\n\r\n")
                    if await tls.receive_some(16) == b"\r\n":
                        answered += 1
                    else:
                        failed += 1
                        return
            except (trio.BrokenResourceError, trio.TooSlowError, OSError):
                failed += 1
                return
            await trio.sleep(KEEPALIVE_EVERY)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for i, (tls, _) in enumerate(held):
                nursery.start_soon(one, tls, KEEPALIVE_EVERY * i / len(held))
    return answered, failed


async def measure(args, pki) -> dict:
    import gc

    import trio
    context = ssl.create_default_context(cafile=str(pki.ca))
    out: dict = {}
    for kind in ("tls", "wss"):
        # A fresh edge each: memory freed by an earlier run would be reused.
        edge = Edge(pki.server_cert, pki.server_key)
        held: list = []
        try:
            # Warm up: the first connections pay for imports and caches.
            await open_idle(edge, context, 20, kind, held)
            await close_all(held)
            gc.collect()
            await trio.sleep(1.0)
            before = edge.rss_kb()
            failed = await open_idle(edge, context, args.idle, kind, held)
            await trio.sleep(1.0)
            out[f"idle_{kind}"] = (edge.rss_kb() - before, len(held), failed)
            await close_all(held)
        finally:
            edge.stop()
    edge = Edge(pki.server_cert, pki.server_key)
    try:
        n, cpu = await handshakes(edge, context, args.seconds, concurrency=8)
        out["handshakes"] = (n, cpu)
        n, cpu = await wss_messages(edge, context, args.seconds, connections=4)
        out["wss"] = (n, cpu)
        held = []
        await trio.sleep(1.0)
        before = edge.rss_kb()
        started = time.monotonic()
        failed = await open_idle(edge, context, args.many, "tls", held, concurrency=200)
        opened_in = time.monotonic() - started
        cpu0 = edge.cpu()
        answered, ka_failed = await keepalives(held, args.hold)
        out["many"] = {"open": len(held), "failed_open": failed, "opened_in": opened_in,
                       "answered": answered, "ka_failed": ka_failed, "rss_kb": edge.rss_kb(),
                       "rss_delta_kb": edge.rss_kb() - before,
                       "cpu_share": (edge.cpu() - cpu0) / args.hold}
        await close_all(held)
    finally:
        edge.stop()
    return out


def table(results: dict, args) -> str:
    n, cpu = results["handshakes"]
    m, wcpu = results["wss"]
    rows = [("TLS handshakes/s per edge core", f"{n / cpu:,.0f}" if cpu else "n/a",
             f"{n:,} handshakes in {args.seconds:g} s, edge CPU {cpu:.2f} s (8 clients in parallel)"),
            ("WSS messages/s per edge core", f"{m / wcpu:,.0f}" if wcpu else "n/a",
             f"{m:,} requests answered in {args.seconds:g} s, edge CPU {wcpu:.2f} s (4 connections, 64 in flight each)")]
    for kind in ("tls", "wss"):
        delta, held, failed = results[f"idle_{kind}"]
        per = delta / held if held else float("nan")
        verdict = "beats" if per < KAMAILIO_TLS_KB else "does NOT beat"
        rows.append((f"Memory per idle {kind.upper()} connection", f"{per:.1f} KB",
                     f"edge RSS +{delta:,} KB over {held:,} connections ({failed} failed); {verdict} "
                     f"Kamailio's ~{KAMAILIO_TLS_KB} KB per TLS connection"))
    many = results["many"]
    rows.append((f"{args.many:,} idle TLS connections, keep-alive every {KEEPALIVE_EVERY:g} s",
                 f"{many['open']:,} held",
                 f"{many['failed_open']} failed to open (opened in {many['opened_in']:.0f} s); over {args.hold:g} s "
                 f"{many['answered']:,} keep-alives answered, {many['ka_failed']} failed; edge RSS "
                 f"{many['rss_kb'] / 1024:,.0f} MB (+{many['rss_delta_kb'] / 1024:,.0f} MB, "
                 f"{many['rss_delta_kb'] / max(1, many['open']):.1f} KB each), edge CPU {100 * many['cpu_share']:.1f}%"))
    lines = ["| Measure | Value | Detail |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny numbers: a smoke test, not a measurement")
    parser.add_argument("--seconds", type=float, default=None, help="length of each rate run (default 10, quick 1)")
    parser.add_argument("--idle", type=int, default=None, help="idle connections per memory run (default 2000)")
    parser.add_argument("--many", type=int, default=None, help="connections of the hold run (default 10000)")
    parser.add_argument("--hold", type=float, default=None, help="seconds of the hold run (default 30)")
    parser.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    quick = args.quick
    args.seconds = args.seconds or (1.0 if quick else 10.0)
    args.idle = args.idle or (100 if quick else 2000)
    args.many = args.many or (300 if quick else 10_000)
    args.hold = args.hold or (3.0 if quick else 30.0)
    limit = raise_nofile(args.many + 1000)
    if limit < args.many + 100:
        print(f"RLIMIT_NOFILE hard limit {limit} is below {args.many} connections", file=sys.stderr)
        return 2
    import trio

    from tests.support.pki import make_pki
    with tempfile.TemporaryDirectory(prefix="sipcluster-bench-tls-") as tmp:
        pki = make_pki(Path(tmp))
        results = trio.run(measure, args, pki)
    print(table(results, args))
    print(f"\nMachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; loopback only; "
          f"Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
