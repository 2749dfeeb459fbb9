"""The one place a python3-etcd3 client is built, authenticated and rebuilt.

Every etcd client of the project — the membership and user feed
(``EtcdStore``), the registrar's store and location cache (``EtcdKV``), the
CLI, ``status`` and the SIP log switch — gets its connection here, from
``cluster.etcd*`` of ``ClusterConfig`` (DESIGN §8: etcd over TLS with client
certificates and auth). ``EtcdAccess`` says how to reach etcd;
``EtcdConnection`` holds one client built from it, shared by threads, and is
the error boundary: every gRPC or etcd3 failure leaves it as
``CoordinationError`` — ``EtcdAuthError`` when etcd refused who we are.

What the connection does that a bare ``etcd3.client()`` does not:

* Endpoints are retried ``ENDPOINT_RETRY`` seconds after an UNAVAILABLE
  (etcd3 waits 300 s), with failover across every URL, and gRPC's reconnect
  backoff is capped at 1 s (120 s by default), so a restarted etcd is back
  in use within about a second.
* etcd's auth tokens expire (``--auth-token-ttl``, simple tokens live only
  in the memory of the etcd that issued them, so a restart invalidates them
  too) and etcd3 authenticates only when a client is constructed. A call
  answered UNAUTHENTICATED is therefore retried once on a newly built,
  newly authenticated client.
* TLS files are read each time a client is built, and a client is rebuilt
  after a connection failure once they changed on disk, so a rotated
  certificate (cert-manager, a Kubernetes Secret update) is picked up
  without a restart. A client certificate outside its validity period is
  named in the error, since gRPC only reports a failed handshake.
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .errors import CoordinationError, EtcdAuthError, EtcdCredentialsRejected
from .observer import EtcdObserver, observed

if TYPE_CHECKING:
    from cluster.config import ClusterConfig

__all__ = [
    "DEFAULT_TIMEOUT", "ENDPOINT_RETRY", "EtcdAccess", "EtcdConnection", "certificate_problem",
    "parse_endpoint", "translate",
]

T = TypeVar("T")

#: Deadline of every unary etcd call, in seconds. A call that outlasts it
#: fails and is retried by its caller; a lease refresh stuck longer than the
#: TTL loses the lease, and the membership keeper then registers again.
DEFAULT_TIMEOUT = 3.0
#: Seconds an endpoint that answered UNAVAILABLE is skipped (etcd3: 300).
ENDPOINT_RETRY = 1.0
DEFAULT_PORT = 2379

GRPC_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A watch on a half-open connection (peer vanished without a reset)
    # would otherwise wait forever. etcd answers pings more frequent than
    # every 5 s, or pings without an active call, with GOAWAY
    # (--grpc-keepalive-min-time), hence 10 s and only during calls.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
)


def parse_endpoint(url: str) -> tuple[str, int, bool]:
    """``(host, port, secure)`` of an etcd client URL; bare ``host[:port]`` means http."""
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an etcd client URL: {url!r}")
    port = parts.port or DEFAULT_PORT  # .port raises ValueError when out of range
    host = parts.hostname
    # gRPC targets are "host:port"; an IPv6 literal needs its brackets back.
    return (f"[{host}]" if ":" in host else host), port, parts.scheme == "https"


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise CoordinationError(f"connect: cannot read {path}: {error.strerror or error}") from None


def _mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


def certificate_problem(path: str | None, now: datetime.datetime | None = None) -> str | None:
    """Why the PEM certificate at ``path`` is unusable now (expired, not yet
    valid), or None. Unreadable files are left to the TLS layer."""
    if path is None:
        return None
    try:
        from cryptography import x509
        with open(path, "rb") as file:
            certificate = x509.load_pem_x509_certificate(file.read())
    except (OSError, ValueError, ImportError):
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    if now > certificate.not_valid_after_utc:
        return f"client certificate {path} expired at {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    if now < certificate.not_valid_before_utc:
        return (f"client certificate {path} is not valid before "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    return None


def _status(error: BaseException) -> Any:
    """The gRPC status code of an error, or of the gRPC error etcd3 replaced."""
    import grpc
    for candidate in (error, error.__context__):
        if isinstance(candidate, grpc.RpcError):
            code = getattr(candidate, "code", None)
            return code() if callable(code) else None
    return None


def _rpc_text(error: BaseException) -> str:
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    if callable(code) and callable(details):
        status = code()
        name = status.name.lower() if status is not None else "unknown"
        return f"{name}: {details()}" if details() else name
    return str(error) or type(error).__name__


def translate(op: str, error: BaseException, *, user: str | None = None,
              cert: str | None = None) -> CoordinationError:
    """The project's error for an etcd3/gRPC failure of ``op``: ``EtcdAuthError``
    when etcd refused the credentials (or the client certificate is out of
    date), else ``CoordinationError``."""
    import grpc
    if isinstance(error, CoordinationError):
        return error
    status = _status(error)
    cause = error if isinstance(error, grpc.RpcError) else error.__context__
    text = _rpc_text(cause) if isinstance(cause, grpc.RpcError) else (str(error) or type(error).__name__)
    who = f"user {user}" if user else "this client"
    if status is grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in text:
        return EtcdCredentialsRejected(f"{op}: etcd refused {who}: {text}")
    if status in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return EtcdAuthError(f"{op}: etcd refused {who}: {text}")
    if status is grpc.StatusCode.UNAVAILABLE and cert is not None:
        problem = certificate_problem(cert)
        if problem is not None:
            return EtcdAuthError(f"{op}: {text} ({problem})")
    return CoordinationError(f"{op}: {text}")


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """How to reach etcd: client URLs, TLS files, user and password.

    ``endpoints`` are client URLs (``http://127.0.0.1:2379``,
    ``https://etcd-0:2379``), all tried in turn (failover). TLS is used for
    ``https`` URLs: ``ca`` verifies the server (None: the system trust
    store), ``cert``/``key`` are the client certificate. ``user`` and
    ``password`` turn on etcd auth (a token, renewed when etcd rejects it).
    ValueError for a bad URL or a half-given pair.
    """

    endpoints: tuple[str, ...]
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        endpoints = self.endpoints
        if isinstance(endpoints, str):
            endpoints = [part for part in endpoints.split(",") if part.strip()]
        object.__setattr__(self, "endpoints", tuple(endpoints))
        if not self.endpoints:
            raise ValueError("etcd needs at least one endpoint URL")
        for url in self.endpoints:
            parse_endpoint(url)
        if (self.user is None) != (self.password is None):
            raise ValueError("etcd user and password go together")
        if (self.cert is None) != (self.key is None):
            raise ValueError("etcd client certificate and key go together")

    @classmethod
    def from_config(cls, cluster: ClusterConfig, *, timeout: float = DEFAULT_TIMEOUT) -> EtcdAccess:
        """The access ``config.cluster`` describes (endpoints, TLS files, auth)."""
        return cls(tuple(cluster.etcd), ca=cluster.etcd_ca, cert=cluster.etcd_cert,
                   key=cluster.etcd_key, user=cluster.etcd_user, password=cluster.etcd_password,
                   timeout=timeout)

    @property
    def targets(self) -> tuple[tuple[str, int, bool], ...]:
        return tuple(parse_endpoint(url) for url in self.endpoints)

    def describe(self) -> str:
        """The URLs and the user, for messages (never the password)."""
        urls = ",".join(f"{'https' if s else 'http'}://{h}:{p}" for h, p, s in self.targets)
        return f"{urls} as user {self.user}" if self.user else urls

    def tls_stamp(self) -> tuple[float | None, ...]:
        """Modification times of the TLS files: a change means "build again"."""
        return tuple(_mtime(path) for path in (self.ca, self.cert, self.key))

    def connect(self) -> Any:
        """A new ``etcd3.MultiEndpointEtcd3Client``; authenticates when ``user`` is set.

        Blocking (the auth handshake is a call): worker threads or the CLI
        only. Raises ``EtcdAuthError`` when etcd refuses the credentials and
        ``CoordinationError`` when it cannot be reached.
        """
        import etcd3
        import grpc

        credentials = None
        if any(secure for _, _, secure in self.targets):
            # root_certificates=None means the system's trust store.
            credentials = grpc.ssl_channel_credentials(_read(self.ca), _read(self.key), _read(self.cert))
        endpoints = [
            etcd3.Endpoint(host, port, secure=secure, creds=credentials if secure else None,
                           time_retry=ENDPOINT_RETRY, opts=GRPC_OPTIONS)
            for host, port, secure in self.targets
        ]
        try:
            return etcd3.MultiEndpointEtcd3Client(endpoints=endpoints, timeout=self.timeout,
                                                  user=self.user, password=self.password,
                                                  failover=True)
        except BaseException as error:
            for endpoint in endpoints:
                endpoint.close()
            if isinstance(error, Exception) and _status(error) is not None:
                raise self.translate("authenticate", error) from error
            raise

    def translate(self, op: str, error: BaseException) -> CoordinationError:
        """The project's error for an etcd3/gRPC failure of ``op``."""
        return translate(op, error, user=self.user, cert=self.cert)

    def rejected_credentials(self) -> str | None:
        """Why etcd refuses ``user``/``password``, or None (accepted, no auth,
        or etcd not reachable now: that one heals by retrying). Blocking."""
        if self.user is None:
            return None
        try:
            self.connect().close()
        except EtcdCredentialsRejected as error:
            return error.reason
        except CoordinationError:
            return None
        return None


class EtcdConnection:
    """One etcd client, built on first use and rebuilt when it has to be.

    ``source`` is an ``EtcdAccess`` or, for tests and tools that bring their
    own client, a function returning one. ``run(op, fn, *args)`` is the
    error boundary: it calls ``fn`` (which takes the client from
    ``client()``) and turns any etcd3/gRPC error into ``CoordinationError``;
    an UNAUTHENTICATED answer (expired token) is retried once on a client
    built again. Each ``run`` is reported to ``observer`` as it ends, with the
    error it raised (``EtcdObserver``). Thread-safe.
    """

    def __init__(self, source: EtcdAccess | Callable[[], Any], *,
                 observer: EtcdObserver | None = None) -> None:
        self._observer = observer
        self.access = source if isinstance(source, EtcdAccess) else None
        self._build = source.connect if isinstance(source, EtcdAccess) else source
        self._client: Any = None
        self._stamp: tuple[float | None, ...] = ()
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<EtcdConnection {self.access.describe() if self.access else 'custom client'}>"

    def client(self) -> Any:
        """The current client; builds (and authenticates) one if there is none."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise CoordinationError("etcd connection is closed")
            if self._client is None:
                stamp = self.access.tls_stamp() if self.access else ()
                self._client = self._build()
                self._stamp = stamp
            return self._client

    def translate(self, op: str, error: BaseException) -> CoordinationError:
        """``error`` as ours; also drops the client if it cannot recover by itself."""
        import grpc
        status = _status(error)
        if status is grpc.StatusCode.UNAUTHENTICATED:
            self._drop()
        elif status is grpc.StatusCode.UNAVAILABLE and self.access is not None \
                and self.access.tls_stamp() != self._stamp:
            self._drop()  # rotated TLS files: the next call builds with the new ones
        access = self.access
        return translate(op, error, user=access.user if access else None,
                         cert=access.cert if access else None)

    def run(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` with errors translated, once more after an expired token."""
        if self._observer is None:
            return self._run(op, fn, *args)
        return observed(self._observer, op, self._run, op, fn, *args)

    def _run(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        for attempt in (1, 2):
            try:
                return fn(*args)
            except CoordinationError:
                raise
            except Exception as error:
                import grpc
                import etcd3.exceptions
                if not isinstance(error, (grpc.RpcError, etcd3.exceptions.Etcd3Exception, ValueError)):
                    raise
                # ValueError: etcd3's "Trying to use a failed node".
                translated = self.translate(op, error)
                if attempt == 1 and self._renewable(error):
                    continue
                raise translated from error
        raise AssertionError("unreachable")  # pragma: no cover

    def call(self, op: str, method: str, *args: Any) -> Any:
        """The client's ``method(*args)`` (``"get"``, ``"put"``, ``"delete"``…) through ``run``."""
        return self.run(op, lambda: getattr(self.client(), method)(*args))

    def _renewable(self, error: BaseException) -> bool:
        import grpc
        return (self.access is not None and self.access.user is not None
                and _status(error) is grpc.StatusCode.UNAUTHENTICATED)

    def _drop(self) -> None:
        with self._lock:
            stale, self._client = self._client, None
        if stale is not None:
            stale.close()

    def close(self) -> None:
        """Close the gRPC channels; later calls raise ``CoordinationError``."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()
