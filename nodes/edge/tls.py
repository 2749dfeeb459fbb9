"""SIP over TLS at the edge (RFC 3261 §26.2, §19.1.2 ``sips:``).

``TlsContexts`` builds the server and client ``ssl.SSLContext`` objects from
the files ``edge.tls_*`` name and builds them again when those files change
(polled, for a Kubernetes Secret whose mounted files are swapped) or on
SIGHUP. A new context serves only new handshakes; an open connection keeps the
one it was made with, so a certificate rotation drops nothing.

``TlsTransport`` is the TCP transport (``nodes/edge/tcp.py``: the connection
table, the Content-Length framing, the per-connection writer) with a TLS
handshake in front of each connection, bounded by
``edge.tls_handshake_timeout``. ``StreamGuard`` is what TLS and WebSocket
connections add to TCP's: a peer that stops reading fills its bounded write
queue, and then the connection is closed instead of holding messages.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
from collections import Counter
from collections.abc import Callable

import trio

from cluster.config import EdgeConfig

from .forwarder import Forwarder
from .tcp import Connection, TcpTransport

log = logging.getLogger("sipcluster.edge")

# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3's are all of that
# kind and are not affected by set_ciphers).
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384"
_VERIFY = {"off": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(MODERN_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def certificate_names(cert_file: str) -> tuple[str, ...]:
    """The DNS names of the first (leaf) certificate in ``cert_file``."""
    from cryptography import x509
    with open(cert_file, "rb") as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4.3: ``*`` stands for exactly the left-most label."""
    if pattern.startswith("*."):
        head, dot, rest = name.partition(".")
        return bool(dot and head) and rest == pattern[2:]
    return pattern == name


class TlsContexts:
    """The edge's TLS contexts, built from ``EdgeConfig`` and kept current."""

    def __init__(self, edge: EdgeConfig, stats: Counter[str]) -> None:
        self.edge = edge
        self.stats = stats
        self.server: ssl.SSLContext | None = None
        """None without ``edge.tls_cert`` (no tls: or wss: listener)."""
        self.client: ssl.SSLContext = ssl.create_default_context()
        self.generation = 0
        """How many times the contexts were built; 1 after start-up."""
        self._stamps = self._read_stamps()
        self.build()

    def _files(self) -> list[str]:
        e = self.edge
        files = [f for f in (e.tls_cert, e.tls_key, e.tls_client_ca, e.tls_ca) if f]
        for pair in e.tls_sni:
            files += pair.split(":", 1)
        return files

    def _read_stamps(self) -> dict[str, tuple[int, int, int] | None]:
        stamps: dict[str, tuple[int, int, int] | None] = {}
        for path in self._files():
            try:
                st = os.stat(path)  # follows symlinks: a Secret's ..data swap shows
                stamps[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                stamps[path] = None
        return stamps

    def build(self) -> None:
        """Build every context from the files; raises OSError (ssl.SSLError)
        when one cannot be loaded, leaving the current ones in place."""
        e = self.edge
        server = None
        if e.tls_cert and e.tls_key:
            server = self._server_context(e.tls_cert, e.tls_key)
            named: list[tuple[str, ssl.SSLContext]] = []
            for pair in e.tls_sni:
                cert, key = pair.split(":", 1)
                context = self._server_context(cert, key)
                named += [(name, context) for name in certificate_names(cert)]
            if named:
                server.sni_callback = _sni_chooser(named)
        client = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=e.tls_ca))
        if e.tls_cert and e.tls_key:
            # A carrier interconnect may require our certificate both ways.
            client.load_cert_chain(e.tls_cert, e.tls_key)
        self.server, self.client = server, client
        self.generation += 1

    def _server_context(self, cert: str, key: str) -> ssl.SSLContext:
        e = self.edge
        context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        context.load_cert_chain(cert, key)
        context.verify_mode = _VERIFY[e.tls_verify_client]
        if e.tls_client_ca:
            context.load_verify_locations(cafile=e.tls_client_ca)
        return context

    def reload(self, why: str) -> bool:
        """Build again; on failure keep serving with the current contexts."""
        try:
            self.build()
        except (OSError, ValueError) as error:
            self.stats["tls_reload_failed"] += 1
            log.error("TLS certificates not reloaded (%s): %s; the previous ones stay in use", why, error)
            return False
        self.stats["tls_reloaded"] += 1
        log.info("TLS certificates reloaded (%s)", why)
        return True

    def check(self) -> bool:
        """Reload if a file changed since the last check; True if it did."""
        stamps = self._read_stamps()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        # A file half-written by a copy fails to load; the next check sees
        # the final stamp and tries again.
        return self.reload("files changed")

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        interval = self.edge.tls_reload_interval
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._poll, interval)
                async for _ in signals:
                    self._stamps = self._read_stamps()
                    self.reload("SIGHUP")

    async def _poll(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self.check()


def _sni_chooser(named: list[tuple[str, ssl.SSLContext]]) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]:
    def choose(sslobj: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        if name is None:
            return
        lowered = name.lower()
        for pattern, context in named:
            if name_matches(pattern, lowered):
                sslobj.context = context
                return
    return choose


class StreamGuard(TcpTransport):
    """TCP's connection handling plus what a TLS or WebSocket connection
    needs: a pending-handshake count within ``max_connections``, and a write
    queue that, once full, closes the connection (a peer that stops reading
    costs a bounded queue, never unbounded memory)."""

    def __init__(self, forwarder: Forwarder, *, contexts: TlsContexts | None, idle_timeout: float,
                 max_connections: int, handshake_timeout: float, message_timeout: float = 10.0,
                 per_source: int = 64, queue: int = 1000) -> None:
        super().__init__(forwarder, idle_timeout=idle_timeout, max_connections=max_connections,
                         message_timeout=message_timeout, per_source=per_source, queue=queue)
        self.contexts = contexts
        """With TLS contexts, each accepted connection starts with a TLS handshake."""
        self.handshake_timeout = handshake_timeout
        self.handshaking = 0
        self._scopes: dict[int, trio.CancelScope] = {}
        self._written: dict[int, trio.Event] = {}

    def full(self) -> bool:
        return len(self.connections) + self.handshaking >= self.max_connections

    async def _serve(self, stream: trio.abc.Stream) -> None:
        if self.full():
            self.forwarder.stats[f"{self.prefix}_refused_max_connections"] += 1
            await stream.aclose()
            return
        self.handshaking += 1
        try:
            opened = await self._open(stream)
        finally:
            self.handshaking -= 1
        if opened is not None:
            # TCP's admission (per-source limit) on the opened stream.
            await super()._serve(opened)

    async def _open(self, stream: trio.abc.Stream) -> trio.abc.Stream | None:
        """The stream to read from once its TLS handshake is done, or None
        (counted) after closing it."""
        if self.contexts is None:
            return stream
        context = self.contexts.server
        if context is None:  # config requires tls_cert with a tls: or wss: listener
            await stream.aclose()
            return None
        return await tls_handshake(stream, context, within=self.handshake_timeout,
                                   stats=self.forwarder.stats, prefix=self.prefix)

    async def _writer(self, conn: Connection, scope: trio.CancelScope) -> None:
        self._scopes[conn.id] = scope
        written = self._written.setdefault(conn.id, trio.Event())
        try:
            await super()._writer(conn, scope)
        finally:
            written.set()
            self._scopes.pop(conn.id, None)
            self._written.pop(conn.id, None)

    def _queue(self, conn: Connection, data: bytes) -> bool:
        try:
            conn.outgoing.send_nowait(data)
            return True
        except trio.WouldBlock:
            scope = self._scopes.pop(conn.id, None)
            if scope is None:
                self.forwarder.stats[f"drop_{self.prefix}_closing"] += 1
            else:
                self.forwarder.stats[f"{self.prefix}_write_queue_full_closed"] += 1
                scope.cancel()
            return False
        except trio.ClosedResourceError:
            self.forwarder.stats[f"drop_{self.prefix}_closing"] += 1
            return False

    async def finish(self, conn: Connection, last: bytes = b"") -> None:
        """Write what is queued and ``last``, then end the writer (for a
        close that must reach the peer: an HTTP 400, a WebSocket close)."""
        if last:
            self._queue(conn, last)
        # The writer may not have run yet (trio schedules in any order).
        written = self._written.setdefault(conn.id, trio.Event())
        conn.outgoing.close()
        with trio.move_on_after(self.handshake_timeout):
            await written.wait()
        self._written.pop(conn.id, None)


async def tls_handshake(stream: trio.abc.Stream, context: ssl.SSLContext, *, within: float,
                        stats: Counter[str], prefix: str,
                        server_hostname: str | None = None) -> trio.SSLStream[trio.abc.Stream] | None:
    """``stream`` with TLS on it once the handshake is done, else None after
    closing it: a handshake that does not finish within ``timeout`` or fails
    (plain text on a TLS port, an unknown CA, no client certificate) is counted."""
    tls = trio.SSLStream(stream, context, server_side=server_hostname is None,
                         server_hostname=server_hostname, https_compatible=True)
    failure = None
    with trio.move_on_after(within) as scope:
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            failure = error
    if scope.cancelled_caught:
        stats[f"{prefix}_handshake_timeout"] += 1
    elif failure is not None:
        stats[f"{prefix}_handshake_failed"] += 1
        log.debug("TLS handshake failed: %s", failure.__cause__ or failure)
    else:
        return tls
    await trio.aclose_forcefully(stream)
    return None


class TlsTransport(StreamGuard):
    transport = "TLS"
    prefix = "tls"

    def __init__(self, forwarder: Forwarder, contexts: TlsContexts, *, idle_timeout: float,
                 max_connections: int, handshake_timeout: float, message_timeout: float = 10.0,
                 per_source: int = 64, queue: int = 1000) -> None:
        super().__init__(forwarder, contexts=contexts, idle_timeout=idle_timeout,
                         max_connections=max_connections, handshake_timeout=handshake_timeout,
                         message_timeout=message_timeout, per_source=per_source, queue=queue)
        self.client_contexts = contexts

    def send(self, data: bytes, peer: tuple[str, int], conn_id: int | None, *, flow: bool = False) -> bool:
        if self._nursery is None:
            # No tls: listener runs the table: outgoing TLS is served by
            # run_outgoing (started by the node).
            self.forwarder.stats["drop_tls_no_connection"] += 1
            return False
        return super().send(data, peer, conn_id, flow=flow)

    async def run_outgoing(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The connection table without a listener: outgoing TLS only."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _connect(self, peer: tuple[str, int], data: bytes) -> None:
        """RFC 3261 §26.2: a TLS connection to a ``sips:`` or ``transport=tls``
        hop, the server's certificate checked against ``edge.tls_ca`` for the
        address it was reached at (the worker resolved the name)."""
        try:
            with trio.fail_after(self.handshake_timeout):
                stream = await trio.open_tcp_stream(peer[0], peer[1])
        except (OSError, trio.TooSlowError):
            self.forwarder.stats["tls_connect_failed"] += 1
            return
        tls = await tls_handshake(stream, self.client_contexts.client, within=self.handshake_timeout,
                                  stats=self.forwarder.stats, prefix="tls_out",
                                  server_hostname=peer[0])
        if tls is not None:
            await self._handle(tls, first=data)
