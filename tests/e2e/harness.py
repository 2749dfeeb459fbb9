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
                 extra: list[str] | None = None, env: dict[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.state_dir = state_dir
        self.host = host
        self.workers = workers
        self.etcd = etcd
        self.extra = extra or []
        # SIPCLUSTER_* settings for every node (the inherited ones are dropped).
        self.extra_env = dict(env or {})
        # Tests send nothing off this machine, DNS queries included: unless a
        # test names its DNS server (a dnsmasq of its own), workers ask a
        # loopback port nobody answers on, so a host name is answered 504
        # after a second (ops/guide/dns.md) instead of asking the system's
        # resolver.
        if "SIPCLUSTER_DNS_SERVERS" not in self.extra_env:
            self.extra_env.update({"SIPCLUSTER_DNS_SERVERS": f"127.0.0.1:{free_port_pair()}",
                                   "SIPCLUSTER_DNS_TIMEOUT": "0.5", "SIPCLUSTER_DNS_LIFETIME": "1"})
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
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120.0) -> UpCluster:
        argv = [sys.executable, "-m", "cluster.cli", "up", "--workers", str(self.workers),
                "--listen", f"{self.host}:{self.port}", "--state-dir", str(self.state_dir / "up")]
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

    def cli(self, *args: str, timeout: float = 30.0, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                              text=True, env=self.env, cwd=ROOT, timeout=timeout, input=input)

    def status(self) -> dict:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def worker_pids(self) -> dict[str, int]:
        return {m["id"]: m["pid"] for m in self.status()["members"] if m["role"] == "worker"}

    def user(self, *args: str, password: str | None = None) -> str:
        """``sipcluster user ...`` against this cluster's etcd; fails the test on
        error. ``password`` goes to standard input (``--password-stdin``)."""
        argv = ["user", *args]
        if password is not None:
            argv.append("--password-stdin")
        if self.etcd:
            argv += ["--etcd", self.etcd]
        result = self.cli(*argv, input=None if password is None else password + "\n")
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout


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
        except (TimeoutError, ConnectionError):
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
        except TimeoutError:
            return None if not expect_reply else b""


# -- SIPp --------------------------------------------------------------------------


class Sipp:
    """One SIPp process on an explicit loopback port (``-p 0`` would mean 5060).

    Messages and errors are traced to files in ``workdir`` so a failing test
    can show what SIPp saw (``report()``).
    """

    def __init__(self, scenario: str, workdir: Path, *, name: str, port: int | None = None,
                 remote: str | None = None, transport: str = "u1", keys: dict | None = None,
                 sets: dict | None = None, args: list[str] | None = None,
                 timeout: float = 30.0) -> None:
        self.name = name
        self.port = port or free_port_pair()
        self.workdir = workdir
        self.messages_path = workdir / f"{name}.messages.log"
        self.errors_path = workdir / f"{name}.errors.log"
        argv = ["sipp"]
        if remote:
            argv.append(remote)
        argv += ["-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(self.port),
                 "-t", transport, "-m", "1", "-nostdin", "-timeout", f"{int(timeout)}s",
                 "-timeout_error", "-trace_msg", "-message_file", str(self.messages_path),
                 "-trace_err", "-error_file", str(self.errors_path)]
        for key, value in (keys or {}).items():
            argv += ["-key", key, str(value)]
        for key, value in (sets or {}).items():
            argv += ["-set", key, str(value)]
        argv += args or []
        self.argv = argv
        self.timeout = timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> Sipp:
        self.process = subprocess.Popen(self.argv, cwd=self.workdir, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        return self

    def wait(self, timeout: float | None = None) -> int:
        assert self.process is not None
        try:
            self.process.wait(timeout if timeout is not None else self.timeout + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode

    def run(self) -> int:
        return self.start().wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def messages(self) -> str:
        try:
            return self.messages_path.read_text(errors="replace")
        except OSError:
            return ""

    def report(self) -> str:
        out = [f"--- sipp {self.name}: {' '.join(self.argv)}"]
        if self.process is not None and self.process.stdout is not None and self.process.poll() is not None:
            out.append(self.process.stdout.read()[-1500:])
        for path in (self.errors_path, self.messages_path):
            try:
                out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
            except OSError:
                pass
        return "\n".join(out)


# -- a small SIP user agent for precise checks ------------------------------------------


class SipAgent:
    """A UDP SIP endpoint on loopback: builds and sends requests, answers
    requests it receives, and waits for messages matching a predicate.
    Messages read while waiting for something else are kept for later."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()
        self.inbox: list[tuple[object, tuple[str, int]]] = []
        self.tag = uuid.uuid4().hex[:10]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SipAgent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def contact(self) -> str:
        return f"sip:agent@{self.host}:{self.port}"

    def request(self, method: str, uri: str, *, call_id: str, cseq: int, from_: str, to: str,
                headers: list[tuple[str, str]] = (), body: bytes = b"",
                branch: str | None = None, from_tag: str | None = None):
        from cluster.sip import Request
        branch = branch or f"z9hG4bK{uuid.uuid4().hex[:16]}"
        fields = [
            ("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{from_}>;tag={from_tag or self.tag}"),
            ("To", to if to.startswith("<") else f"<{to}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            *headers,
        ]
        return Request(method, uri, fields, body)

    def send(self, message, port: int, host: str = "127.0.0.1") -> None:
        data = message if isinstance(message, bytes) else message.to_bytes()
        self.sock.sendto(data, (host, port))

    def receive(self, match, timeout: float = 10.0):
        """The first message (and source) for which ``match(message)`` is true."""
        from cluster.sip import ParseError, parse_message
        for i, (message, source) in enumerate(self.inbox):
            if match(message):
                del self.inbox[i]
                return message, source
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, None
            self.sock.settimeout(left)
            try:
                data, source = self.sock.recvfrom(65536)
            except (TimeoutError, ConnectionError):
                continue
            try:
                message = parse_message(data)
            except ParseError:
                continue
            if match(message):
                return message, source
            self.inbox.append((message, source))

    def transact(self, request, port: int, *, timeout: float = 10.0, ack: bool = True):
        """Send ``request`` (retransmitting over UDP like a client transaction)
        and return the final response, or None. Provisional responses are
        recorded in ``self.provisional``; a non-2xx final answer to an INVITE
        is acknowledged (§17.1.1.3)."""
        from cluster.sip import Response
        branch = request.via.branch
        method = request.cseq.method
        self.provisional = []

        def ours(message) -> bool:
            return (isinstance(message, Response) and message.via.branch == branch
                    and message.cseq.method == method)

        deadline = time.monotonic() + timeout
        interval = 0.5
        self.send(request, port)
        next_send = time.monotonic() + interval
        proceeding = False
        while time.monotonic() < deadline:
            wait = max(0.01, min(deadline, next_send) - time.monotonic())
            response, _ = self.receive(ours, wait)
            if response is None:
                if not proceeding and time.monotonic() >= next_send:
                    self.send(request, port)
                    interval = min(interval * 2, 4.0)
                    next_send = time.monotonic() + interval
                continue
            if response.status < 200:
                self.provisional.append(response)
                proceeding = True
                continue
            if method == "INVITE" and response.status >= 300 and ack:
                self.send(self.ack_for(request, response), port)
            return response
        return None

    def ack_for(self, invite, response):
        """The ACK for a non-2xx final response: same branch, hop by hop (§17.1.1.3)."""
        from cluster.sip import Request
        fields = [("Via", invite.get("via")), ("Max-Forwards", "70"), ("From", invite.get("from")),
                  ("To", response.get("to")), ("Call-ID", invite.call_id),
                  ("CSeq", f"{invite.cseq.seq} ACK")]
        fields += [("Route", r) for r in invite.get_all("route")]
        return Request("ACK", invite.uri, fields)

    def answer(self, request, status: int, source: tuple[str, int], *, to_tag: str | None = None,
               headers: list[tuple[str, str]] = ()) -> None:
        """Answer ``request`` to where it came from."""
        from cluster.sip import make_response
        response = make_response(request, status, to_tag=to_tag or self.tag, headers=headers)
        self.sock.sendto(response.to_bytes(), source)


def answer_challenge(agent: SipAgent, request, response, *, username: str, password: str):
    """``request`` again with credentials for ``response``'s challenge (401 or
    407), a new branch and the next CSeq."""
    from cluster.auth.digest import credential
    from cluster.sip import Request
    proxy = response.status == 407
    challenges = response.proxy_authenticates if proxy else response.www_authenticates
    uri = str(request.uri)
    field = credential(challenges[0], username=username, password=password,
                       method=request.method, uri=uri, cnonce=uuid.uuid4().hex[:12])
    again = Request(request.method, request.uri, [], request.body)
    for header in request.headers:
        if header.key in ("via", "cseq"):
            continue
        again.add(header.name, header.value)
    again.push_via(request.get("via").replace(request.via.branch,
                                              f"z9hG4bK{uuid.uuid4().hex[:16]}"))
    again.set("CSeq", f"{request.cseq.seq + 1} {request.method}")
    again.add("Proxy-Authorization" if proxy else "Authorization", str(field))
    return again


def bound(port: int, transport: str = "udp") -> bool:
    """Whether something on this machine listens on ``port`` (UDP bound, or
    TCP in LISTEN state), read from /proc so the check sends nothing."""
    table = "/proc/net/udp" if transport == "udp" else "/proc/net/tcp"
    want = f":{port:04X}"
    with open(table) as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(want) and (transport == "udp" or fields[3] == "0A"):
                return True
    return False


class Registrant:
    """One UA registering ``user``@``domain`` through the cluster at ``port``:
    keeps its Call-ID and CSeq across REGISTERs (RFC 3261 §10.2.4)."""

    def __init__(self, port: int, user: str, password: str, *, domain: str = "localhost",
                 agent: SipAgent | None = None) -> None:
        self.port = port
        self.user = user
        self.password = password
        self.domain = domain
        self.agent = agent or SipAgent()
        self.call_id = f"reg-{uuid.uuid4().hex}"
        self.cseq = 0

    def close(self) -> None:
        self.agent.close()

    def register(self, contacts: list[str], *, expires: int | None = None,
                 headers: list[tuple[str, str]] = (), password: str | None = None):
        """REGISTER, answering one 401 challenge; the final response (None
        if nothing came back)."""
        self.cseq += 1
        fields = [("Contact", c) for c in contacts]
        if expires is not None:
            fields.append(("Expires", str(expires)))
        aor = f"sip:{self.user}@{self.domain}"
        request = self.agent.request("REGISTER", f"sip:{self.domain}", call_id=self.call_id,
                                     cseq=self.cseq, from_=aor, to=aor, headers=[*fields, *headers])
        response = self.agent.transact(request, self.port)
        if response is not None and response.status == 401:
            again = answer_challenge(self.agent, request, response, username=self.user,
                                     password=password or self.password)
            self.cseq = again.cseq.seq
            response = self.agent.transact(again, self.port)
        return response


def probe_call(port: int, user: str, callee: SipAgent | None, *, call_id: str | None = None,
               domain: str = "localhost", timeout: float = 15.0) -> tuple[int, list[str]]:
    """INVITE ``user``@``domain`` from a foreign domain (a trusted source
    needs no credentials for that). ``callee`` answers every fork that
    reaches it 486 Busy Here. Returns the caller's final status (0: none)
    and the Request-URIs that reached ``callee``."""
    call_id = call_id or f"probe-{uuid.uuid4().hex}"
    reached: list[str] = []
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            request, source = callee.receive(
                lambda m: getattr(m, "method", None) == "INVITE" and m.call_id == call_id,
                timeout=0.1)
            if request is not None:
                reached.append(str(request.uri))
                callee.answer(request, 486, source)

    thread = threading.Thread(target=answer, daemon=True) if callee is not None else None
    if thread is not None:
        thread.start()
    try:
        with SipAgent() as caller:
            invite = caller.request("INVITE", f"sip:{user}@{domain}", call_id=call_id, cseq=1,
                                    from_="sip:probe@example.org", to=f"sip:{user}@{domain}",
                                    headers=[("Contact", caller.contact)])
            response = caller.transact(invite, port, timeout=timeout)
    finally:
        done.set()
        if thread is not None:
            thread.join(5)
    return (response.status if response is not None else 0), reached


class LocationSync:
    """Waits until every worker's location cache has caught up with etcd.

    Lookups come from watch-fed caches (DESIGN §6), so a binding is usable a
    few milliseconds after its 200, later on a loaded machine. A cache
    applies etcd events in revision order, so once a binding written *now*
    is visible through a worker, every earlier registration is too: ``wait``
    registers a fresh contact for a marker user nobody else calls and sends
    INVITEs owned by each worker until one reaches it.
    """

    def __init__(self, cluster: UpCluster, user: str = "location-marker") -> None:
        from cluster.sharding.ring import Ring
        password = uuid.uuid4().hex
        cluster.user("add", f"{user}@localhost", password=password)
        self.port = cluster.port
        self.user = user
        self.registrant = Registrant(cluster.port, user, password)
        self.contact: str | None = None
        self.count = 0
        ring = Ring(sorted(cluster.worker_pids()))
        self.call_ids: dict[str, str] = {}
        while len(self.call_ids) < len(ring.members):
            call_id = f"sync-{uuid.uuid4().hex}"
            self.call_ids.setdefault(ring.owner(call_id.encode()), call_id)

    def close(self) -> None:
        self.registrant.close()

    def wait(self, timeout: float = 30.0) -> None:
        self.count += 1
        agent = self.registrant.agent
        fresh = f"sip:m{self.count}@127.0.0.1:{agent.port}"
        contacts = [f"<{fresh}>"]
        if self.contact is not None:
            contacts.append(f"<{self.contact}>;expires=0")
        response = self.registrant.register(contacts, expires=600)
        assert response is not None and response.status == 200, response
        self.contact = fresh
        for worker, call_id in self.call_ids.items():
            wait_for(lambda call_id=call_id: any(uri == fresh for uri in probe_call(
                self.port, self.user, agent, call_id=call_id)[1]),
                timeout=timeout, interval=0.05, what=f"location cache of {worker}")
