"""One typed configuration object for every node (DESIGN §10, STYLE §5).

Precedence: defaults (enough for a laptop) < TOML file < ``SIPCLUSTER_<SECTION>_<FIELD>``
environment variables (12-factor, for Kubernetes) < dotted-key overrides from CLI
flags. The section constructors check everything once, at start-up; a bad value
raises ``ConfigError`` naming the key (``edge.listen[1]``) and where the value came
from, because an operator with a crash-looping pod needs those, not a traceback.
Unknown keys and ``SIPCLUSTER_`` variables are errors: a typo that silently falls
back to a default is worse than a crash. Field metadata (doc, bounds, choices) is
also the operations guide's reference: ``python -m cluster.config --reference``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
import ssl
import sys
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_type_hints

from .defence.scanner import DEFAULT_BLOCKED_AGENTS

__all__ = [
    "CONFIG_ENV", "ClusterConfig", "Config", "ConfigError", "DnsConfig", "EdgeConfig", "ENV_PREFIX",
    "HttpConfig", "Listen", "LogConfig", "NON_FIELD_ENV", "SECURE_TRANSPORTS", "SUPPORTED_TRANSPORTS", "TRANSPORTS", "WorkerConfig",
    "default_node_id", "load_config", "reference_markdown",
]

ENV_PREFIX = "SIPCLUSTER_"
# Not a field: names the file to load when load_config() gets no path.
CONFIG_ENV = "SIPCLUSTER_CONFIG"
# SIPCLUSTER_ variables that are not configuration fields, so not typos:
# STATE_DIR is where `sipcluster up` keeps its files (cluster.discovery).
NON_FIELD_ENV = frozenset((CONFIG_ENV, "SIPCLUSTER_STATE_DIR"))
TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
SUPPORTED_TRANSPORTS = TRANSPORTS
SECURE_TRANSPORTS = ("tls", "wss")
"""Transports that need ``edge.tls_cert`` and ``edge.tls_key``."""
VERIFY_CLIENT = ("off", "optional", "required")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")

_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_NOT_NODE_ID_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._-]+)+\Z")
# RFC 1123 §2.1 host names; a trailing dot (FQDN) is allowed.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?\Z"
)
_DOTTED_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_APP_REF = re.compile(rf"{_DOTTED_NAME}:{_DOTTED_NAME}\Z")
_TRUE = frozenset(("true", "1", "yes", "on"))
_FALSE = frozenset(("false", "0", "no", "off"))


class ConfigError(ValueError):
    """A configuration value that cannot be used; ``.field`` names it (``edge.listen[1]``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        return type(self), (self.field, self.problem)


# -- addresses -------------------------------------------------------------

def _is_host(host: str) -> bool:
    if _HOSTNAME.match(host):
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _split_hostport(text: str, *, min_port: int, port_required: bool,
                    wildcard: bool = False) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; raises ValueError(reason)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("has an unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"has [{host}] that is not an IPv6 address") from None
        if rest and rest[0] != ":":
            raise ValueError("has text after ']' that is not ':PORT'")
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise ValueError("needs brackets around an IPv6 address, e.g. [::1]:5060")
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = None
        if not (_is_host(host) or (wildcard and host == "*")):
            raise ValueError(f"has host {host!r} that is not an IP address or host name")
    if port_text is None:
        if port_required:
            raise ValueError("has no port")
        return host, None
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"has port {port_text!r} that is not a number")
    port = int(port_text) if len(port_text) <= 5 else 10 ** 5
    if not min_port <= port <= 65535:
        raise ValueError(f"has port {port_text} outside {min_port}-65535")
    return host, port


@dataclass(frozen=True, slots=True)
class Listen:
    """One SIP listening socket: ``transport:host:port`` (IPv6 as ``udp:[::1]:5060``)."""

    transport: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        """Parse ``transport:host:port``; raises ValueError saying what is wrong."""
        transport, sep, rest = text.partition(":")
        if not sep:
            raise ValueError(f"{text!r} is not TRANSPORT:HOST:PORT")
        lowered = transport.lower()
        if lowered not in TRANSPORTS:
            raise ValueError(f"{text!r} has unknown transport {transport!r} (one of {', '.join(TRANSPORTS)})")
        try:
            host, port = _split_hostport(rest, min_port=1, port_required=True)
        except ValueError as exc:
            raise ValueError(f"{text!r} {exc}") from None
        return cls(lowered, host, port)  # type: ignore[arg-type]  # port_required: an int

    @classmethod
    def parse_entry(cls, text: str) -> tuple[Listen, ...]:
        """One ``edge.listen`` entry: ``transport:host:port``, or a bare
        ``host:port`` (``[v6]:port``), which means UDP and TCP there."""
        transport = text.partition(":")[0].lower()
        if transport not in TRANSPORTS:
            try:
                host, port = _split_hostport(text, min_port=1, port_required=True)
            except ValueError:
                return (cls.parse(text),)  # says what is wrong with it as transport:host:port
            return cls("udp", host, port), cls("tcp", host, port)  # type: ignore[arg-type]
        return (cls.parse(text),)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def _check_link(name: str, text: str) -> None:
    # ZeroMQ bind endpoints; tcp port 0 asks the OS for a free port.
    scheme, sep, rest = text.partition("://")
    if sep and scheme == "tcp":
        try:
            _split_hostport(rest, min_port=0, port_required=True, wildcard=True)
        except ValueError as exc:
            raise ConfigError(name, f"{text!r} {exc}") from None
    elif not (sep and scheme in ("ipc", "inproc") and rest):
        raise ConfigError(name, f"{text!r} is not tcp://HOST:PORT, ipc://PATH or inproc://NAME")


def default_node_id() -> str:
    """``<hostname>-<pid>``, squeezed into ``[A-Za-z0-9._-]{1,64}``."""
    suffix = f"-{os.getpid()}"
    host = _NOT_NODE_ID_CHAR.sub("-", socket.gethostname()) or "node"
    return host[: 64 - len(suffix)] + suffix


def _f(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = dataclasses.MISSING,
       shown: str | None = None, lo: float | None = None, hi: float | None = None,
       above: float | None = None, choices: tuple[str, ...] = ()) -> Any:
    # Bounds and choices live next to the field so that validation and the
    # reference table cannot disagree.
    return field(default=default, default_factory=factory, metadata={
        "doc": doc, "shown": shown, "lo": lo, "hi": hi, "above": above, "choices": choices})


class _Section:
    """Shared construction: coerce each field to its declared type, then validate."""

    __slots__ = ()
    SECTION: ClassVar[str]
    # Every section is a dataclass; declared so the type checker knows.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[object]]]

    def __post_init__(self) -> None:
        for spec in _SPECS[self.SECTION].values():
            value = getattr(self, spec.name)
            coerced = _coerce(spec, value)
            if spec.choices:
                coerced = coerced.lower()
                if coerced not in spec.choices:
                    raise ConfigError(spec.key, f"{value!r} is not one of {', '.join(spec.choices)}")
            elif spec.kind in ("int", "float"):
                if spec.lo is not None and spec.hi is not None and not spec.lo <= coerced <= spec.hi:
                    raise ConfigError(spec.key, f"{value!r} is outside {spec.lo}..{spec.hi}")
                if spec.lo is not None and coerced < spec.lo:
                    raise ConfigError(spec.key, f"{value!r} is less than {spec.lo}")
                if spec.above is not None and not coerced > spec.above:
                    raise ConfigError(spec.key, f"{value!r} is not greater than {spec.above}")
            if coerced is not value:
                object.__setattr__(self, spec.name, coerced)
        self._validate()

    def _validate(self) -> None:
        """Checks that involve more than one field or more than a range."""


# -- sections --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClusterConfig(_Section):
    """Identity of this node and how it reaches etcd, the membership and state store."""

    SECTION: ClassVar[str] = "cluster"
    prefix: str = _f("/sipcluster", "etcd key prefix shared by every node of one cluster; members live under `<prefix>/members/`.")
    etcd: tuple[str, ...] = _f(("http://127.0.0.1:2379",), "etcd client URLs (`http://` or `https://`, all the same scheme).")
    etcd_ca: str | None = _f(None, "CA certificate file for `https` etcd endpoints; required with them.")
    etcd_cert: str | None = _f(None, "Client certificate file for etcd; set together with `etcd_key`.")
    etcd_key: str | None = _f(None, "Client private key file for etcd; set together with `etcd_cert`.")
    etcd_user: str | None = _f(None, "etcd user name (etcd auth); set together with `etcd_password`.")
    etcd_password: str | None = _f(None, "etcd password; set together with `etcd_user`.")
    lease_ttl: int = _f(5, "Seconds of the membership lease; a dead node leaves the ring this long after it stops.", lo=2, hi=60)
    node_id: str = _f(doc="Unique member id, `[A-Za-z0-9._-]{1,64}`; the last segment of the member key.",
                      factory=default_node_id, shown="<hostname>-<pid>")
    link_secret_dir: str | None = _f(None, "Directory with this node's CurveZMQ link key pair, `link.key` and `link.key_secret` "
                                         "(`sipcluster keys generate --dir DIR`); unset = a pair made in memory at start. "
                                         "Links are CURVE either way and admit only current members' published keys.")
    record_route: str | None = _f(None, "`host` or `host:port` naming the whole cluster in Record-Route (a DNS name "
                                        "whose SRV/A records list every edge, or an address the edges share), so "
                                        "in-dialog requests reach a surviving edge when the one that set up the dialog "
                                        "is lost; unset = the receiving edge's own advertised address. The same on every worker.")

    def _validate(self) -> None:
        if self.record_route is not None:
            _check_public_hostport("cluster.record_route", self.record_route)
        if not _PREFIX.match(self.prefix):
            raise ConfigError("cluster.prefix", f"{self.prefix!r} must look like '/sipcluster' (segments of letters, digits, '.', '_', '-')")
        if not self.etcd:
            raise ConfigError("cluster.etcd", "needs at least one endpoint URL")
        schemes = set()
        for i, url in enumerate(self.etcd):
            scheme, sep, rest = url.partition("://")
            if not sep or scheme not in ("http", "https"):
                raise ConfigError(f"cluster.etcd[{i}]", f"{url!r} is not an http:// or https:// URL")
            try:
                _split_hostport(rest.rstrip("/"), min_port=1, port_required=True)
            except ValueError as exc:
                raise ConfigError(f"cluster.etcd[{i}]", f"{url!r} {exc}") from None
            schemes.add(scheme)
            if len(schemes) > 1:
                raise ConfigError(f"cluster.etcd[{i}]", f"{url!r} mixes http and https endpoints")
        secure = "https" in schemes
        if secure and self.etcd_ca is None:
            raise ConfigError("cluster.etcd_ca", "required when the etcd endpoints use https")
        if not secure:
            for name in ("etcd_ca", "etcd_cert"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"cluster.{name}", "set, but the etcd endpoints use plain http")
        for a, b in (("etcd_cert", "etcd_key"), ("etcd_user", "etcd_password")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                missing, given = (b, a) if getattr(self, b) is None else (a, b)
                raise ConfigError(f"cluster.{missing}", f"required together with cluster.{given}")
        for name, exists, kind in (("etcd_ca", os.path.isfile, "file"), ("etcd_cert", os.path.isfile, "file"),
                                   ("etcd_key", os.path.isfile, "file"), ("link_secret_dir", os.path.isdir, "directory")):
            path = getattr(self, name)
            if path is not None and not exists(path):
                raise ConfigError(f"cluster.{name}", f"no such {kind} {path!r}")
        if not _NODE_ID.match(self.node_id):
            raise ConfigError("cluster.node_id", f"{self.node_id!r} does not match [A-Za-z0-9._-]{{1,64}}")

    def etcd_endpoints(self) -> tuple[tuple[str, int], ...]:
        """``(host, port)`` per etcd URL, as the etcd3 client takes them."""
        # port_required: every port is an int.
        return tuple(_split_hostport(url.partition("://")[2].rstrip("/"), min_port=1, port_required=True)  # type: ignore[misc]
                     for url in self.etcd)


@dataclass(frozen=True, slots=True)
class EdgeConfig(_Section):
    """Edge nodes: SIP sockets, load shedding, and the link that carries traffic from workers."""

    SECTION: ClassVar[str] = "edge"
    listen: tuple[Listen, ...] = _f(
        (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060)),
        "SIP sockets as `transport:host:port` (IPv6: `udp:[::1]:5060`); transports udp, tcp, tls, ws, wss "
        "(tls and wss need `tls_cert` and `tls_key`); a bare `host:port` means udp and tcp there.")
    advertise: str | None = _f(None, "`host` or `host:port` written in Via and Record-Route; unset = the first listen address. "
                                     "Required when that binds 0.0.0.0 or ::. Its port is the UDP and TCP one; tls, ws "
                                     "and wss advertise the port they listen on.")
    link: str = _f("tcp://127.0.0.1:0", "ZeroMQ bind endpoint for worker→edge traffic; port 0 picks a free port.")
    max_message: int = _f(65535, "Largest SIP message accepted, in bytes; larger ones are rejected.", lo=1024, hi=1_048_576)
    udp_batch: int = _f(256, "Most datagrams drained from a UDP socket per wakeup.", lo=1)
    queue: int = _f(256, "ZeroMQ messages queued on each link to or from a worker (a message carries up to 32 "
                         "SIP messages); a full queue is a counted drop, and a request answered 503. Kept short "
                         "so that a flood cannot build seconds of backlog.", lo=1)
    tcp_idle_timeout: float = _f(300.0, "Seconds before an idle TCP connection is closed.", above=0)
    max_connections: int = _f(10000, "Most concurrent stream connections.", lo=1)
    max_connections_per_source: int = _f(64, "Most concurrent stream connections from one source address; "
                                             "more are refused (counted drop).", lo=1)
    tcp_message_timeout: float = _f(10.0, "Seconds a stream peer has to complete a SIP message once its first "
                                          "byte arrived; a slower one (slowloris) is disconnected (counted drop).",
                                    above=0)
    rate_limit: float = _f(0.0, "Requests per second allowed per source IP; a source above it (after its "
                                "`rate_burst`) is banned for `rate_ban_time`, every message from it dropped "
                                "unanswered. 0 turns rate limiting off.", lo=0)
    rate_burst: int = _f(100, "Requests a source IP may send in a burst above `rate_limit`.", lo=1)
    rate_ban_time: float = _f(60.0, "Seconds a source that exceeded `rate_limit` stays banned (on every edge, "
                                    "through etcd).", above=0)
    rate_exempt: tuple[str, ...] = _f((), "CIDR networks never banned for their request rate (trunks, "
                                          "other proxies).")
    rate_sources: int = _f(65536, "Most source addresses whose request rate is tracked; the least recently "
                                  "seen is forgotten first, so a spoofed-source flood cannot grow memory.", lo=1)
    max_bans: int = _f(65536, "Most banned addresses an edge holds; beyond it the oldest bans are forgotten "
                              "(counted in `sipcluster_edge_ban_evictions_total`).", lo=1)
    tls_cert: str | None = _f(None, "PEM file with the certificate chain (leaf first) of the tls: and wss: listeners, "
                                    "also presented as client certificate on outgoing TLS. Reloaded when it changes "
                                    "(checked every `tls_reload_interval`) and on SIGHUP; open connections stay up.")
    tls_key: str | None = _f(None, "PEM file with the private key of `tls_cert`.")
    tls_sni: tuple[str, ...] = _f((), "More certificates as `CERT_FILE:KEY_FILE`, chosen by the name a client asks "
                                      "for (TLS SNI) among each certificate's DNS names; `tls_cert` serves any other name.")
    tls_verify_client: str = _f("off", "Client certificates on tls: and wss: (carrier interconnects): `off` asks for "
                                       "none, `optional` checks one if sent, `required` refuses a client without one "
                                       "issued by `tls_client_ca`.", choices=VERIFY_CLIENT)
    tls_client_ca: str | None = _f(None, "PEM CA bundle client certificates must chain to; required unless "
                                         "`tls_verify_client` is off.")
    tls_ca: str | None = _f(None, "PEM CA bundle outgoing TLS checks the peer's certificate and name against "
                                  "(sips: targets, transport=tls); unset = the system's trust store.")
    tls_handshake_timeout: float = _f(10.0, "Seconds a TLS handshake (and a WebSocket upgrade) may take before the "
                                            "connection is cut.", above=0)
    tls_reload_interval: float = _f(5.0, "Seconds between checks whether the certificate files changed.", above=0)
    ws_origins: tuple[str, ...] = _f((), "Origins (`https://app.example.com`) allowed to open a WebSocket; empty "
                                         "accepts any. An upgrade from another Origin is answered 403.")
    ws_ping_interval: float = _f(30.0, "Seconds of silence on a WebSocket before the edge sends a ping; a "
                                       "connection still silent one interval later is closed.", above=0)
    user_agent_block: tuple[str, ...] = _f(DEFAULT_BLOCKED_AGENTS, "Requests whose User-Agent contains one of "
                                           "these (case-insensitive) are dropped unanswered (scanners); empty "
                                           "turns the check off.")

    def _validate(self) -> None:
        if not self.listen:
            raise ConfigError("edge.listen", "needs at least one address")
        seen: set[Listen] = set()
        for i, address in enumerate(self.listen):
            if address.transport not in SUPPORTED_TRANSPORTS:
                raise ConfigError(f"edge.listen[{i}]", f"transport {address.transport!r} is not supported yet "
                                                      f"(supported: {', '.join(SUPPORTED_TRANSPORTS)})")
            if address in seen:
                raise ConfigError(f"edge.listen[{i}]", f"'{address}' is listed twice")
            # tcp, tls, ws and wss are all TCP sockets: one port each.
            clash = [s for s in seen if s.transport != "udp" and address.transport != "udp"
                     and (s.host, s.port) == (address.host, address.port)]
            if clash and address.port:
                raise ConfigError(f"edge.listen[{i}]", f"'{address}' takes the TCP port of '{clash[0]}'")
            seen.add(address)
        if self.advertise is None:
            first = self.listen[0]
            if _is_unspecified(first.host):
                raise ConfigError("edge.advertise", f"must be set: edge.listen[0] '{first}' binds an unspecified "
                                                    "address, which peers cannot send to")
        else:
            _check_public_hostport("edge.advertise", self.advertise)
        _check_link("edge.link", self.link)
        self._validate_tls()
        for i, network in enumerate(self.rate_exempt):
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ConfigError(f"edge.rate_exempt[{i}]", f"{network!r} is not a CIDR network: {exc}") from None
        for i, token in enumerate(self.user_agent_block):
            if not token.strip() or not token.isascii():
                raise ConfigError(f"edge.user_agent_block[{i}]", f"{token!r} is not a non-empty ASCII text")

    def _validate_tls(self) -> None:
        # Every file is loaded here as the edge will load it: an unusable
        # certificate stops the edge at start-up, naming the field.
        secure = [(i, a) for i, a in enumerate(self.listen) if a.transport in SECURE_TRANSPORTS]
        if secure and (self.tls_cert is None or self.tls_key is None):
            i, address = secure[0]
            missing = "edge.tls_cert" if self.tls_cert is None else "edge.tls_key"
            raise ConfigError(missing, f"required by edge.listen[{i}] '{address}'")
        if (self.tls_cert is None) != (self.tls_key is None):
            missing, given = ("tls_key", "tls_cert") if self.tls_key is None else ("tls_cert", "tls_key")
            raise ConfigError(f"edge.{missing}", f"required together with edge.{given}")
        if self.tls_cert is not None and self.tls_key is not None:
            _check_pem("edge.tls_cert", (self.tls_cert, self.tls_key), lambda c: c.load_cert_chain(self.tls_cert, self.tls_key))
        for i, pair in enumerate(self.tls_sni):
            cert, sep, key = pair.partition(":")
            if not (sep and cert and key):
                raise ConfigError(f"edge.tls_sni[{i}]", f"{pair!r} is not CERT_FILE:KEY_FILE")
            _check_pem(f"edge.tls_sni[{i}]", (cert, key), lambda c, cert=cert, key=key: c.load_cert_chain(cert, key))
        if self.tls_verify_client != "off" and self.tls_client_ca is None:
            raise ConfigError("edge.tls_client_ca", f"required with edge.tls_verify_client = {self.tls_verify_client}")
        for name in ("tls_client_ca", "tls_ca"):
            path = getattr(self, name)
            if path is not None:
                _check_pem(f"edge.{name}", (path,), lambda c, path=path: c.load_verify_locations(cafile=path))

    def advertised(self) -> tuple[str, int]:
        """``(host, port)`` for Via sent-by and Record-Route (RFC 3261 §18.2.1, §16.6 step 4).

        A bare ``advertise`` host takes the first listen port.
        """
        if self.advertise is None:
            return self.listen[0].host, self.listen[0].port
        host, port = _split_hostport(self.advertise, min_port=1, port_required=False)
        return host, self.listen[0].port if port is None else port


def _check_pem(name: str, files: tuple[str, ...], load: Any) -> None:
    """Run ``load(context)`` on a throw-away TLS context; ConfigError naming
    ``name`` when ``files`` are missing, unreadable or not usable PEM."""
    for path in files:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(name, f"cannot read {path!r}: {exc.strerror or exc}") from None
    try:
        load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    except OSError as exc:
        # ssl.SSLError is an OSError; FileNotFoundError and PermissionError too.
        reason = exc.strerror if exc.strerror and not isinstance(exc, ssl.SSLError) else str(exc)
        raise ConfigError(name, f"cannot load: {reason}" + (f" ({exc.filename})" if exc.filename else "")) from None


def _check_public_hostport(name: str, text: str) -> None:
    """``host[:port]`` that peers send to (Via, Record-Route): never 0.0.0.0 or ::."""
    try:
        host, _ = _split_hostport(text, min_port=1, port_required=False)
    except ValueError as exc:
        raise ConfigError(name, f"{text!r} {exc}") from None
    if _is_unspecified(host):
        raise ConfigError(name, f"{text!r} is an unspecified address")


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class WorkerConfig(_Section):
    """Worker shards: the link from edges, the routing application, timers, registrar and authentication."""

    SECTION: ClassVar[str] = "worker"
    link: str = _f("tcp://127.0.0.1:0", "ZeroMQ bind endpoint for edge→worker traffic; port 0 picks a free port.")
    app: str = _f("cluster.app.default:application", "Routing application as `module:object`.")
    drain_timeout: float = _f(32.0, "Seconds a leaving worker keeps serving in-flight transactions (Timer B/F = 64·T1).", lo=0)
    domains: tuple[str, ...] = _f(("localhost",), "SIP domains this cluster is responsible for (registrar, local routing).")
    trusted: tuple[str, ...] = _f(("127.0.0.0/8", "::1/128"), "CIDR networks allowed to relay to foreign domains without authentication.")
    t1: float = _f(0.5, "RFC 3261 T1, RTT estimate in seconds (§17.1.1.1).", above=0)
    t2: float = _f(4.0, "RFC 3261 T2, longest non-INVITE retransmit interval in seconds; must exceed t1.", above=0)
    t4: float = _f(5.0, "RFC 3261 T4, seconds a message may stay in the network.", above=0)
    nonce_secret: str | None = _f(None, "HMAC key for stateless digest nonces, the same on every worker (at least 16 characters); "
                                        "unset = generated per cluster.")
    nonce_ttl: int = _f(300, "Seconds a digest nonce stays valid.", lo=1)
    digest_algorithms: tuple[str, ...] = _f(("MD5", "SHA-256"), "Digest algorithms offered in challenges, one "
                                            "challenge each, in this order (RFC 8760 §2.4). MD5 first because many "
                                            "user agents (SIPp, baresip, sipsak) answer only the first challenge and "
                                            "know only MD5; a credential with an algorithm not offered is refused.")
    digest_sha256_domains: tuple[str, ...] = _f((), "Local domains (from `domains`) whose realm is challenged with "
                                                "SHA-256 only and accepts no MD5 credential; user agents that know "
                                                "only MD5 cannot authenticate there.")
    redirect_domains: tuple[str, ...] = _f((), "Local domains served as a redirect server (302 with the registered "
                                           "contacts) instead of proxying.")
    outbound_proxy: str | None = _f(None, "SIP URI of a proxy that requests for foreign domains are sent through "
                                          "(e.g. `sip:sbc.example.net:5060`); unset = straight to the Request-URI's host.")
    registrar_min_expires: int = _f(60, "Shortest registration accepted, seconds; shorter gets 423 (RFC 3261 §10.3 step 7).", lo=1)
    registrar_max_expires: int = _f(7200, "Longest registration granted, seconds; longer is shortened.")
    registrar_default_expires: int = _f(3600, "Expiry of a registration that asks for none, seconds.")
    flow_timer: int = _f(120, "Seconds between keep-alives a UA must send on an RFC 5626 outbound flow, "
                              "sent as Flow-Timer in the 200 to a REGISTER that applies outbound (§4.4.1); "
                              "must be below `edge.tcp_idle_timeout`.", lo=10, hi=3600)
    auth_fail_limit: int = _f(10, "Failed digest attempts for one user, or from one source address, within "
                                  "`auth_fail_window` that ban the user (refused with 403 by every worker) or "
                                  "the address (dropped by every edge; never one in `trusted`, which may relay "
                                  "many users) for `auth_ban_time`; 0 turns it off.", lo=0)
    auth_fail_window: float = _f(60.0, "Seconds over which failed digest attempts are counted.", above=0)
    auth_ban_time: float = _f(600.0, "Seconds a password-guessing ban lasts.", above=0)
    overload_lag: float = _f(0.5, "Seconds a message may wait in the worker's link queue before the worker sheds "
                                  "every new request (503 with Retry-After); at a quarter of it OPTIONS and garbage "
                                  "are shed, at half REGISTER and other new requests. In-dialog requests and "
                                  "responses are never shed.", above=0)

    def _validate(self) -> None:
        _check_link("worker.link", self.link)
        if not _APP_REF.match(self.app):
            raise ConfigError("worker.app", f"{self.app!r} is not 'package.module:object'")
        for i, domain in enumerate(self.domains):
            if not _is_host(domain):
                raise ConfigError(f"worker.domains[{i}]", f"{domain!r} is not a host name or IPv4 address")
        for i, network in enumerate(self.trusted):
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ConfigError(f"worker.trusted[{i}]", f"{network!r} is not a CIDR network: {exc}") from None
        if self.outbound_proxy is not None:
            from .sip import ParseError, SipURI, parse_uri
            try:
                proxy = parse_uri(self.outbound_proxy)
            except ParseError as exc:
                raise ConfigError("worker.outbound_proxy", f"{self.outbound_proxy!r}: {exc.reason}") from None
            if not isinstance(proxy, SipURI):
                raise ConfigError("worker.outbound_proxy", f"{self.outbound_proxy!r} is not a sip: or sips: URI")
        for i, algorithm in enumerate(self.digest_algorithms):
            if algorithm.upper() not in ("SHA-256", "MD5", "SHA-256-SESS", "MD5-SESS"):
                raise ConfigError(f"worker.digest_algorithms[{i}]", f"{algorithm!r} is not SHA-256 or MD5")
        if not self.digest_algorithms:
            raise ConfigError("worker.digest_algorithms", "at least one algorithm is needed")
        domains = {d.lower() for d in self.domains}
        for i, domain in enumerate(self.digest_sha256_domains):
            if domain.lower() not in domains:
                raise ConfigError(f"worker.digest_sha256_domains[{i}]",
                                  f"{domain!r} is not one of worker.domains {sorted(domains)}")
        if self.t2 <= self.t1:
            raise ConfigError("worker.t2", f"{self.t2!r} must be greater than worker.t1 ({self.t1!r})")
        if self.nonce_secret is not None and len(self.nonce_secret) < 16:
            raise ConfigError("worker.nonce_secret", "is shorter than 16 characters")
        if not self.registrar_min_expires <= self.registrar_default_expires <= self.registrar_max_expires:
            raise ConfigError("worker.registrar_default_expires",
                              f"{self.registrar_default_expires} must lie between registrar_min_expires "
                              f"({self.registrar_min_expires}) and registrar_max_expires ({self.registrar_max_expires})")

    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n) for n in self.trusted)


@dataclass(frozen=True, slots=True)
class DispatcherConfig(_Section):
    """Destination sets (`sipcluster dispatcher`): how their members are probed with OPTIONS, and the set the default application relays through."""

    SECTION: ClassVar[str] = "dispatcher"
    probe_interval: float = _f(10.0, "Seconds between two OPTIONS probes of one set member (each member is probed by one worker of the cluster).", above=0)
    probe_timeout: float = _f(5.0, "Seconds a probe may go without a final response before it counts as failed (a timeout never counts as alive).", above=0)
    probe_down_after: int = _f(3, "Failed probes in a row that mark a member down.", lo=1, hi=100)
    probe_up_after: int = _f(2, "Good probes in a row that mark a down member up again.", lo=1, hi=100)
    probe_alive_codes: tuple[str, ...] = _f(("200",), "Final status codes of a probe that count as alive; any other status, a "
                                            "transport error and a timeout count as failed.")
    foreign_set: str | None = _f(None, "Destination set that the default application sends requests for foreign domains "
                                       "from trusted networks to (before `worker.outbound_proxy`); unset = not used.")

    def _validate(self) -> None:
        for i, code in enumerate(self.probe_alive_codes):
            if not code.isdigit() or not 100 <= int(code) <= 699:
                raise ConfigError(f"dispatcher.probe_alive_codes[{i}]", f"{code!r} is not a SIP status code (100-699)")
        if not self.probe_alive_codes:
            raise ConfigError("dispatcher.probe_alive_codes", "at least one status code is needed")
        if self.foreign_set is not None:
            from .dispatch.model import InvalidSet, check_name
            try:
                check_name(self.foreign_set)
            except InvalidSet as exc:
                raise ConfigError("dispatcher.foreign_set", str(exc)) from None

    def alive_codes(self) -> frozenset[int]:
        return frozenset(int(code) for code in self.probe_alive_codes)


@dataclass(frozen=True, slots=True)
class DnsConfig(_Section):
    """How workers locate SIP servers by name (RFC 3263: NAPTR, SRV, A/AAAA) with dnspython."""

    SECTION: ClassVar[str] = "dns"
    servers: tuple[str, ...] = _f((), "DNS servers as `address:port` (port 53 when left out); unset = the system's "
                                      "resolver configuration (`/etc/resolv.conf`, and `/etc/hosts` for addresses).")
    timeout: float = _f(2.0, "Seconds to wait for one server's answer before asking the next one (or again).", above=0)
    lifetime: float = _f(4.0, "Seconds locating one target may take in all (its NAPTR, SRV and A/AAAA lookups, "
                              "every server and retry included); running out is a DNS failure (504, see "
                              "ops/guide/dns.md). At least `timeout`.", above=0)
    cache_entries: int = _f(10000, "Answers (name and type) the worker's cache holds at most; the least recently "
                                   "used go first.", lo=1)
    cache_bytes: int = _f(8 * 1024 * 1024, "Approximate bytes the cache's answers take at most.", lo=4096)
    negative_ttl: float = _f(30.0, "Seconds a name that does not exist (or has no such record) is remembered when "
                                   "the answer carries no SOA to say (RFC 2308 §5).", lo=0)
    block_time: float = _f(60.0, "Seconds a destination that did not answer (timeout, transport error) is skipped "
                                 "by new requests (RFC 3263 §4.3); 0 never blocks.", lo=0)

    def _validate(self) -> None:
        for i, server in enumerate(self.servers):
            try:
                host, _ = _split_hostport(server, min_port=1, port_required=False)
                ipaddress.ip_address(host)
            except ValueError as exc:
                raise ConfigError(f"dns.servers[{i}]", f"{server!r} is not ADDRESS[:PORT] with a numeric "
                                                       f"address ({exc})") from None
        if self.lifetime < self.timeout:
            raise ConfigError("dns.lifetime", f"{self.lifetime!r} is less than dns.timeout ({self.timeout!r})")

    def server_addresses(self) -> tuple[tuple[str, int], ...]:
        """``servers`` as (address, port)."""
        out = []
        for server in self.servers:
            host, port = _split_hostport(server, min_port=1, port_required=False)
            out.append((host, port or 53))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class HttpConfig(_Section):
    """Per-node HTTP endpoint serving /healthz, /readyz, /metrics and /status."""

    SECTION: ClassVar[str] = "http"
    listen: str = _f("127.0.0.1:0", "`host:port` to serve on (port 0 picks a free port); empty disables the endpoint.")

    def _validate(self) -> None:
        if self.listen:
            try:
                _split_hostport(self.listen, min_port=0, port_required=True)
            except ValueError as exc:
                raise ConfigError("http.listen", f"{self.listen!r} {exc}") from None

    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to bind, or None when disabled."""
        if not self.listen:
            return None
        return _split_hostport(self.listen, min_port=0, port_required=True)  # type: ignore[return-value]  # port_required


@dataclass(frozen=True, slots=True)
class LogConfig(_Section):
    """Logging to standard error."""

    SECTION: ClassVar[str] = "log"
    level: str = _f("info", "Lowest level logged.", choices=LOG_LEVELS)
    format: str = _f("json", "`json` (one object per line) or `text` (for people).", choices=LOG_FORMATS)


_SECTIONS: dict[str, type[_Section]] = {
    cls.SECTION: cls for cls in (ClusterConfig, EdgeConfig, WorkerConfig, DnsConfig, DispatcherConfig, HttpConfig,
                                 LogConfig)
}


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of one node."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        # RFC 5626 §4.4.1: a UA keeps its flow alive every Flow-Timer
        # seconds; an edge that closes idle connections sooner drops it.
        if self.worker.flow_timer >= self.edge.tcp_idle_timeout:
            raise ConfigError("worker.flow_timer", f"{self.worker.flow_timer} must be below "
                              f"edge.tcp_idle_timeout ({self.edge.tcp_idle_timeout}): the edge would "
                              "close outbound flows between their keep-alives")

    def to_toml(self) -> str:
        """The configuration as a TOML file that ``load_config`` reads back equal."""
        out: list[str] = []
        for section in _SECTIONS:
            values = getattr(self, section)
            out.append(f"[{section}]")
            for spec in _SPECS[section].values():
                value = getattr(values, spec.name)
                if value is not None:
                    out.append(f"{spec.name} = {_toml_value(value)}")
            out.append("")
        return "\n".join(out)


# -- schema, coercion ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Spec:
    section: str
    name: str
    key: str  # "edge.listen"
    env: str  # "SIPCLUSTER_EDGE_LISTEN"
    kind: str  # "str", "int", "float", "bool", "strs" or "listens"
    optional: bool
    default: Any
    doc: str
    shown: str | None
    lo: float | None
    hi: float | None
    above: float | None
    choices: tuple[str, ...]


_KINDS = {str: "str", int: "int", float: "float", bool: "bool",
          tuple[str, ...]: "strs", tuple[Listen, ...]: "listens"}
_KIND_NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
               "strs": "list of strings", "listens": "list of listen addresses"}


def _build_specs() -> dict[str, dict[str, _Spec]]:
    specs: dict[str, dict[str, _Spec]] = {}
    for section, cls in _SECTIONS.items():
        hints = get_type_hints(cls)
        specs[section] = {}
        for f in dataclasses.fields(cls):
            hint, optional = hints[f.name], False
            if isinstance(hint, types.UnionType):
                (hint,) = [a for a in hint.__args__ if a is not type(None)]
                optional = True
            default = f.default if f.default is not dataclasses.MISSING else None
            specs[section][f.name] = _Spec(section, f.name, f"{section}.{f.name}",
                                           f"{ENV_PREFIX}{section}_{f.name}".upper(),
                                           _KINDS[hint], optional, default, **f.metadata)
    return specs


_SPECS = _build_specs()
_BY_ENV = {spec.env: spec for fields in _SPECS.values() for spec in fields.values()}
_BY_KEY = {spec.key: spec for fields in _SPECS.values() for spec in fields.values()}


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _coerce(spec: _Spec, value: Any) -> Any:
    """Check a native value (TOML or Python) against the field's type."""
    if value is None and spec.optional:
        return value
    kind = spec.kind
    if kind in ("strs", "listens"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(spec.key, f"expected a {_KIND_NAMES[kind]}, got {_describe(value)}")
        items: list[Any] = []
        for i, item in enumerate(value):
            if kind == "listens" and isinstance(item, str):
                try:
                    items.extend(Listen.parse_entry(item))
                except ValueError as exc:
                    raise ConfigError(f"{spec.key}[{i}]", str(exc)) from None
                continue
            if not isinstance(item, Listen if kind == "listens" else str):
                raise ConfigError(f"{spec.key}[{i}]", f"expected a string, got {_describe(item)}")
            items.append(item)
        return tuple(items)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind in ("int", "float") and isinstance(value, int) and not isinstance(value, bool):
        return value if kind == "int" else float(value)
    if kind == "float" and isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(spec.key, f"{value!r} is not a finite number")
        return value
    raise ConfigError(spec.key, f"expected {'an' if kind == 'int' else 'a'} {_KIND_NAMES[kind]}, got {_describe(value)}")


def _from_text(spec: _Spec, text: str, origin: str) -> Any:
    """Turn an environment variable or CLI string into a native value."""
    kind = spec.kind
    if kind in ("strs", "listens"):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if kind == "str":
        return None if spec.optional and text == "" else text
    stripped = text.strip().lower()
    if spec.optional and stripped == "":
        return None
    try:
        if kind == "int":
            return int(stripped)
        if kind == "float":
            return float(stripped)
    except ValueError:
        raise ConfigError(spec.key, f"{origin}={text!r} is not {'an' if kind == 'int' else 'a'} {_KIND_NAMES[kind]}") from None
    if stripped in _TRUE:
        return True
    if stripped in _FALSE:
        return False
    raise ConfigError(spec.key, f"{origin}={text!r} is not a boolean (true/false/1/0)")


def _unknown(name: str, known: list[str], what: str) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(name, f"unknown {what}{hint}")


def _read_file(path: str | os.PathLike[str], raw: dict[str, dict[str, Any]], sources: dict[str, str]) -> None:
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(name, f"cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, f"not valid TOML: {exc}") from None
    for section, table in document.items():
        if section not in _SPECS:
            if isinstance(table, dict):
                raise _unknown(section, list(_SPECS), "section")
            # A key written above any [section]: point at the section it belongs to.
            owners = [k for k in _BY_KEY if k.endswith("." + section)]
            hint = f"; did you mean {owners[0]} (under [{owners[0].partition('.')[0]}])?" if owners else ""
            raise ConfigError(section, f"unknown top-level key{hint}")
        if not isinstance(table, dict):
            raise ConfigError(section, f"must be a table [{section}], got {_describe(table)}")
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if dotted not in _BY_KEY:
                raise _unknown(dotted, list(_BY_KEY), "key")
            raw.setdefault(section, {})[key] = value
            sources[dotted] = f"file {name}"


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, object] | None = None) -> Config:
    """Build and validate the node configuration: defaults < file < env < overrides.

    ``path`` None falls back to ``$SIPCLUSTER_CONFIG``, then to defaults only.
    ``overrides`` maps dotted keys (``"edge.listen"``) to values from CLI
    flags: native values or strings in the environment syntax; None values
    (flags not given) are ignored.
    """
    env = os.environ if env is None else env
    raw: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    if path is None:
        path = env.get(CONFIG_ENV) or None
    if path is not None:
        _read_file(path, raw, sources)
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in NON_FIELD_ENV:
            continue
        spec = _BY_ENV.get(name)
        if spec is None:
            raise _unknown(name, [*_BY_ENV, *NON_FIELD_ENV], "environment variable")
        raw.setdefault(spec.section, {})[spec.name] = _from_text(spec, env[name], name)
        sources[spec.key] = f"environment {name}"
    for key, value in (overrides or {}).items():
        spec = _BY_KEY.get(key)
        if spec is None:
            raise _unknown(key, list(_BY_KEY), "override key")
        if value is None:
            continue
        if isinstance(value, str) and spec.kind != "str":
            value = _from_text(spec, value, key)
        raw.setdefault(spec.section, {})[spec.name] = value
        sources[spec.key] = f"override {key}"
    try:
        # _SECTIONS holds one class per Config field, keyed by the field's name.
        return Config(**{section: cls(**raw.get(section, {}))  # type: ignore[arg-type]
                         for section, cls in _SECTIONS.items()})
    except ConfigError as exc:
        source = sources.get(exc.field.partition("[")[0])
        if source is None:
            raise
        raise ConfigError(exc.field, f"{exc.problem} (from {source})") from None


# -- rendering -------------------------------------------------------------

_TOML_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", 0x7F: "\\u007f",
                 **{c: f"\\u{c:04x}" for c in range(0x20)}}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).translate(_TOML_ESCAPES) + '"'


def reference_markdown() -> str:
    """Every section and field as markdown tables, for the operations guide."""
    out = [
        "# Configuration reference", "",
        "Every node reads one TOML file (`--config` or `$SIPCLUSTER_CONFIG`). Each key can be "
        "overridden by an environment variable `SIPCLUSTER_<SECTION>_<KEY>` (upper case; lists "
        "comma-separated, booleans true/false/1/0, an empty value unsets an optional key) and by "
        "command-line flags. Precedence: defaults < file < environment < flags. Unknown keys and "
        "unknown `SIPCLUSTER_` variables are errors.", "",
    ]
    for section, cls in _SECTIONS.items():
        out += [f"## [{section}]", "", (cls.__doc__ or "").strip(), "",
                "| Key | Type | Default | Environment variable | Description |",
                "|---|---|---|---|---|"]
        for spec in _SPECS[section].values():
            type_name = _KIND_NAMES[spec.kind] + (" (optional)" if spec.optional else "")
            if spec.choices:
                type_name = "one of " + ", ".join(f"`{c}`" for c in spec.choices)
            elif spec.lo is not None:
                type_name += f", {spec.lo}..{spec.hi}" if spec.hi is not None else f", ≥ {spec.lo}"
            elif spec.above is not None:
                type_name += f", > {spec.above}"
            shown = spec.shown or (None if spec.default is None else _toml_value(spec.default))
            default = "unset" if shown is None else f"`{shown}`"
            cells = (f"`{spec.name}`", type_name, default, f"`{spec.env}`", spec.doc)
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cluster.config",
                                     description="Print the configuration reference, or check a configuration.")
    parser.add_argument("--reference", action="store_true", help="print the reference as markdown")
    parser.add_argument("path", nargs="?", help="file to check together with the environment; prints the result as TOML")
    args = parser.parse_args(argv)
    if args.reference:
        sys.stdout.write(reference_markdown())
        return 0
    try:
        config = load_config(args.path)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(config.to_toml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
