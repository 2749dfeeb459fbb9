"""Start the real cluster as separate processes for end-to-end tests.

Everything binds to loopback. Waiting is always for a condition with a
generous deadline, never a fixed sleep, so the tests hold on a loaded 2-core
machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def free_port_pair() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            if port > 65000:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind(("127.0.0.1", port))
                    return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class UpCluster:
    """``sipcluster up`` in a subprocess, against a given etcd."""

    def __init__(self, state_dir: Path, *, workers: int = 2, etcd: str | None = None,
                 extra: list[str] | None = None) -> None:
        self.state_dir = state_dir
        self.workers = workers
        self.etcd = etcd
        self.extra = extra or []
        self.port = free_port_pair()
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.ready = threading.Event()

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env["SIPCLUSTER_STATE_DIR"] = str(self.state_dir)
        env["PYTHONPATH"] = str(ROOT)
        for key in list(env):
            if key.startswith("SIPCLUSTER_") and key != "SIPCLUSTER_STATE_DIR":
                del env[key]
        return env

    def start(self, timeout: float = 120.0) -> "UpCluster":
        argv = [sys.executable, "-m", "cluster.cli", "up", "--workers", str(self.workers),
                "--listen", f"127.0.0.1:{self.port}", "--state-dir", str(self.state_dir / "up")]
        if self.etcd:
            argv += ["--etcd", self.etcd]
        argv += self.extra
        self.ready.clear()
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=self.env, cwd=ROOT)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(timeout):
            self.stop()
            raise AssertionError("cluster not ready:\n" + "\n".join(self.lines[-40:]) + self.logs())
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if "ready" in line:
                self.ready.set()

    def logs(self) -> str:
        out = []
        for path in sorted((self.state_dir / "up").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-15:]
            out.append(f"\n--- {path.name}\n" + "\n".join(text))
        return "".join(out)

    def stop(self, timeout: float = 90.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                              text=True, env=self.env, cwd=ROOT, timeout=timeout)

    def status(self) -> dict:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def worker_pids(self) -> dict[str, int]:
        return {m["id"]: m["pid"] for m in self.status()["members"] if m["role"] == "worker"}


def options(port: int, call_id: str | None = None, *, transport: str = "udp", timeout: float = 2.0,
            cseq: int = 1, branch: str | None = None, host: str = "127.0.0.1") -> tuple[int, dict]:
    """Send one OPTIONS; returns (status, headers) or (0, {}) on timeout."""
    call_id = call_id or uuid.uuid4().hex
    branch = branch or f"z9hG4bK{uuid.uuid4().hex[:16]}"
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(timeout)
        if transport == "udp":
            sock.bind((host, 0))
        else:
            sock.connect((host, port))
        local = sock.getsockname()
        msg = (
            f"OPTIONS sip:test@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} {local[0]}:{local[1]};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nTo: <sip:test@{host}>\r\n"
            f"From: <sip:client@{host}>;tag=t{call_id[:6]}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        try:
            if transport == "udp":
                sock.sendto(msg, (host, port))
                data = sock.recv(65536)
            else:
                sock.sendall(msg)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except (socket.timeout, ConnectionError):
            return 0, {}
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    try:
        status = int(head[0].split(" ")[1])
    except (IndexError, ValueError):
        return 0, {}
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def send_udp(port: int, data: bytes, *, expect_reply: bool, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(65536)
        except socket.timeout:
            return None if not expect_reply else b""
