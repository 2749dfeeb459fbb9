"""DNS servers for tests, on loopback ports the OS picks:

- ``Dnsmasq``: the real dnsmasq (Debian package) with a configuration the
  test writes (``naptr-record``, ``srv-host``, ``host-record``), answering
  UDP and TCP; nothing is forwarded anywhere (``--no-resolv``).
- ``FakeDns``: a UDP socket in a thread that answers every query the same
  broken way (``silent`` reads and never answers, ``servfail``, ``garbage``,
  ``cname-loop``, ``many`` records) — the bad inputs a real server cannot
  be made to give.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rcode
import dns.rrset

from tests.e2e.harness import free_port_pair

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


class Dnsmasq:
    def __init__(self, lines: list[str], *, local: tuple[str, ...] = ("test",)) -> None:
        self.lines = list(lines) + [f"local=/{zone}/" for zone in local]
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix=f"dnsmasq-{os.getpid()}-"))

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, lines: list[str] | None = None, port: int | None = None) -> Dnsmasq:
        if lines is not None:
            self.lines = lines + [line for line in self.lines if line.startswith("local=")]
        conf = self.dir / "dnsmasq.conf"
        conf.write_text("\n".join(self.lines) + "\n")
        for _ in range(5):
            self.port = port or free_port_pair()
            self.process = subprocess.Popen(
                [DNSMASQ, "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1",
                 "--bind-interfaces", "--no-resolv", "--no-hosts", f"--conf-file={conf}",
                 f"--pid-file={self.dir / 'pid'}", "--user=root", "--log-facility=-"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._answers():
                return self
            self.stop()
        raise RuntimeError("dnsmasq did not start")

    def _answers(self) -> bool:
        query = dns.message.make_query("probe.invalid.", "A").to_wire()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.settimeout(0.3)
                try:
                    probe.sendto(query, ("127.0.0.1", self.port))
                    probe.recvfrom(4096)
                    return True
                except OSError:
                    continue
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeDns:
    MODES = ("silent", "servfail", "garbage", "cname-loop", "many", "refused")

    def __init__(self, mode: str, *, records: int = 3000) -> None:
        assert mode in self.MODES
        self.mode = mode
        self.records = records
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeDns:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.queries += 1
            answer = self._answer(data)
            if answer is not None:
                self.sock.sendto(answer, peer)

    def _answer(self, data: bytes) -> bytes | None:
        if self.mode == "silent":
            return None
        if self.mode == "garbage":
            # The query's id, then bytes that are no DNS message.
            return data[:2] + b"\x81\x80\x00\x01\x00\x05" + os.urandom(40)
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name
        if self.mode in ("servfail", "refused"):
            response.set_rcode(dns.rcode.SERVFAIL if self.mode == "servfail" else dns.rcode.REFUSED)
        elif self.mode == "cname-loop":
            other = dns.name.from_text("loop-b", name.parent())
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", other.to_text()))
            response.answer.append(dns.rrset.from_text(other, 60, "IN", "CNAME", name.to_text()))
        elif self.mode == "many":
            rdtype = dns.rdatatype.to_text(question.rdtype)
            if rdtype == "A":
                texts = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(self.records)]
            elif rdtype == "SRV":
                texts = [f"1 1 {5060 + i % 1000} h{i}.{name.to_text()}" for i in range(self.records)]
            else:
                texts = []
            if texts:
                response.answer.append(dns.rrset.from_text_list(name, 60, "IN", rdtype, texts))
        try:
            return response.to_wire(max_size=65535)
        except dns.exception.TooBig:
            # Oversized for UDP: truncated (TC), and there is no TCP here.
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()
