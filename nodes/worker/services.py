"""What the routing API can ask of a worker: all answered from local memory.

Location lookups come from the watch-fed location cache, user settings and
credentials from the watch-fed user cache, so an INVITE costs no etcd round
trip (DESIGN §6). Digest nonces are stateless HMACs (DESIGN §8), so any shard
validates a nonce another shard issued.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from cluster.app.api import AuthOutcome, Challenge, Target
from cluster.auth.digest import NonceManager, OutstandingChallenges, challenge, find_credential, verify
from cluster.auth.users import UserCache
from cluster.dispatch import Dispatcher
from cluster.proxy.flows import FLOW_PARAM, FlowTokens, ForgedFlowToken
from cluster.proxy.routing import DialogTokens, LocalAddresses, split_hostport
from cluster.sip import Request, Response, SipURI, URI, make_response

if TYPE_CHECKING:  # pragma: no cover
    from cluster.registrar.binding import Binding
    from nodes.worker.defence import PasswordGuard


class Locations(Protocol):
    """Where registered contacts are read from memory: the worker's
    LocationCache, or the same traced (cluster.observability.etcd)."""

    def lookup(self, aor: str, now: float) -> list[Binding]: ...


_MEMO_LIMIT = 4096
log = logging.getLogger("sipcluster.worker")

SECURITY_EVENTS = ("relay_refused", "dialog_refused", "identity_refused", "auth_failed", "auth_banned")
"""Node events (``sipcluster_node_events_total{event=...}``) counting refused
relays, in-dialog requests without a valid dialog token, authenticated users
claiming an identity they do not own, credentials that failed to verify, and
credentials of a user banned for password guessing (alert SipclusterTrustRefusals)."""


class Services:
    def __init__(self, *, domains, trusted, nonce_secret: bytes, nonce_ttl: float,
                 locations: Locations | None, users: UserCache | None,
                 digest_algorithms: tuple[str, ...] = ("MD5", "SHA-256"),
                 digest_sha256_domains: tuple[str, ...] = (),
                 outbound_proxy: str | None = None, events: Counter | None = None,
                 clock: Callable[[], float] = time.time,
                 guard: PasswordGuard | None = None, foreign_set: str | None = None,
                 dispatcher: Dispatcher | None = None, flow_secret: bytes | None = None) -> None:
        """``flow_secret``: the cluster's flow-token key (RFC 5626 flows,
        ``cluster.proxy.flows``); the nonce secret stands in when None."""
        self.domains = list(domains) or ["localhost"]
        self.local = LocalAddresses(domains=self.domains)
        self.trusted = [ipaddress.ip_network(n) for n in trusted]
        self.nonces = NonceManager(nonce_secret, nonce_ttl)
        self.tokens = DialogTokens(nonce_secret)
        self.flows = FlowTokens(flow_secret if flow_secret is not None else nonce_secret)
        self.challenges = OutstandingChallenges()
        # The worker's event counter (its stats), so refusals show up as
        # sipcluster_node_events_total like every other node event.
        self.events: Counter = events if events is not None else Counter()
        self.locations = locations
        self.users = users
        self.guard = guard
        """Password-guessing bans (``nodes.worker.defence``), when on."""
        self.serial_forking = False
        self.digest_algorithms = tuple(_spelled(a) for a in digest_algorithms)
        strong = tuple(a for a in self.digest_algorithms if a.upper().startswith("SHA-256")) or ("SHA-256",)
        self._realm_algorithms = {d.lower(): strong for d in digest_sha256_domains}
        self.outbound_proxy = outbound_proxy
        self.foreign_set = foreign_set
        self.dispatcher = dispatcher
        """Destination sets and their health, fed from etcd (``nodes.worker.dispatch``)."""
        """``dispatcher.foreign_set``: the destination set foreign requests go to."""
        # Wall-clock time: nonces and registration expiry are shared by every
        # shard, so they are not on the worker's monotonic clock.
        self.clock = clock
        # Every request asks about its source, and sources repeat (edges, a
        # few peers): answers are memoised, bounded so a scan of many
        # addresses cannot grow them without end.
        self._trusted_hosts: dict[str, bool] = {}
        self._advertised: set[str] = set()
        self._edge_addresses: dict[str, dict[str, str]] = {}

    # -- locality ------------------------------------------------------------------

    def learn_advertise(self, advertise: str | None) -> None:
        if advertise and advertise not in self._advertised:
            host, port = split_hostport(advertise)
            if (host.lower(), port) not in self.local.addresses:
                self.local.add(advertise)
            if len(self._advertised) < _MEMO_LIMIT:
                self._advertised.add(advertise)

    def learn_edges(self, addresses: dict[str, dict[str, str]]) -> None:
        """Each edge's advertised address per transport (its membership
        record): all of them are us, and a request leaving over a transport
        names that transport's address (``advertised``)."""
        self._edge_addresses = addresses
        for per_transport in addresses.values():
            for advertise in per_transport.values():
                self.learn_advertise(advertise)

    def advertised(self, edge: str | None, transport: str) -> str | None:
        """The address ``edge`` (any edge for None or an unknown one)
        advertises for ``transport``, None when no edge has that transport."""
        known = self._edge_addresses
        per_transport = known.get(edge) if edge is not None else None
        if per_transport is not None and transport in per_transport:
            return per_transport[transport]
        for per_transport in known.values():
            if transport in per_transport:
                return per_transport[transport]
        return None

    def is_local_domain(self, uri: URI) -> bool:
        return self.local.is_local_domain(uri)

    def is_trusted(self, host: str) -> bool:
        known = self._trusted_hosts.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            trusted = False
        else:
            trusted = any(address in network for network in self.trusted)
        if len(host) <= 64:  # an address literal; longer is never trusted, not kept
            if len(self._trusted_hosts) >= _MEMO_LIMIT:
                self._trusted_hosts.clear()
            self._trusted_hosts[host] = trusted
        return trusted

    # -- location service ---------------------------------------------------------------

    def lookup(self, uri: URI) -> list[Target]:
        if self.locations is None or not isinstance(uri, SipURI):
            return []
        return one_flow_per_instance(self.locations.lookup(uri.aor(), self.clock()), self.flows,
                                     self.events)

    # -- users -----------------------------------------------------------------------------

    def user(self, uri: URI):
        if self.users is None or not isinstance(uri, SipURI) or not uri.user:
            return None
        return self.users.get(f"{uri.user}@{uri.host.lower()}")

    def user_settings(self, uri: URI) -> dict:
        record = self.user(uri)
        return dict(record.settings) if record is not None else {}

    def algorithms_for(self, realm: str) -> tuple[str, ...]:
        """The digest algorithms offered (and accepted) in ``realm``."""
        return self._realm_algorithms.get(realm.lower(), self.digest_algorithms)

    def authenticate(self, request: Request, realm: str, *, proxy: bool = False,
                     source: str = "") -> AuthOutcome:
        fields = request.proxy_authorizations if proxy else request.authorizations
        credential = find_credential(fields, realm)
        if credential is None or self.users is None:
            return AuthOutcome(None, False, "no credentials")
        self.challenges.answered(request.call_id)
        guard = self.guard
        username = credential.get("username") or ""
        now = self.clock()
        if guard is not None and username and guard.user_banned(f"{username}@{realm}", now):
            self.note("auth_banned", request, source, f"user {username}@{realm} is banned")
            return AuthOutcome(None, False, "user banned for password guessing", banned=True)
        offered = self.algorithms_for(realm)
        algorithm = credential.get("algorithm") or "MD5"  # RFC 7616 §3.4: absent means MD5
        if algorithm.upper() not in (a.upper() for a in offered):
            # The UAC picked an algorithm we did not offer: typically one that
            # knows only MD5 facing a realm that requires SHA-256.
            log.warning("digest credential refused: the client answered with an algorithm it was "
                        "not offered", extra={"source": source, "realm": realm, "algorithm": algorithm,
                                              "offered": ",".join(offered), "call_id": request.call_id})
            self.note("auth_failed", request, source, f"algorithm {algorithm} not offered")
            return AuthOutcome(None, False, f"algorithm {algorithm!r} not offered")
        result = verify(credential, method=request.method, realm=realm, now=now,
                        nonces=self.nonces, ha1=self.users.ha1)
        if result.ok:
            return AuthOutcome(result.username)
        if not result.stale:
            self.note("auth_failed", request, source, result.reason)
            if guard is not None:
                # Only users that exist are banned: guesses at invented names
                # must not fill etcd with bans (the address is banned anyway).
                known = username and self.users.lookup(username, realm) is not None
                # A trusted source (an SBC, a PBX) speaks for many users: one
                # user's stale password must not ban it for all of them.
                guard.failed(f"{username}@{realm}" if known else None,
                             None if self.is_trusted(source) else source, now)
        return AuthOutcome(None, result.stale, result.reason)

    def authenticated_record(self, username: str, realm: str):
        return self.users.lookup(username, realm) if self.users is not None else None

    def challenge(self, request: Request, decision: Challenge, source: str = "") -> Response:
        status = 407 if decision.proxy else 401
        name = "Proxy-Authenticate" if decision.proxy else "WWW-Authenticate"
        now = self.clock()
        nonce = self.nonces.make(now, realm=decision.realm)
        response = make_response(request, status)
        algorithms = self.algorithms_for(decision.realm)
        for field in challenge(decision.realm, nonce, stale=decision.stale, algorithms=algorithms):
            response.add(name, str(field))
        self.challenges.issued(request.call_id, source, decision.realm, algorithms, now)
        return response

    def unanswered_challenges(self, now: float) -> int:
        """Log the challenges nobody answered in time, naming the likely
        cause; called now and then by the worker. Returns how many."""
        expired = self.challenges.expire(now)
        for entry in expired:
            log.warning(
                "digest challenge never answered: the client knows none of the offered "
                "algorithms (many know only MD5) or has no credentials for the realm",
                extra={"source": entry.source, "realm": entry.realm, "call_id": entry.call_id,
                       "offered": ",".join(entry.algorithms)})
        self.events["challenge_unanswered"] += len(expired)
        return len(expired)

    # -- trust ------------------------------------------------------------------------------

    def note(self, event: str, request: Request, source: str, detail: str) -> None:
        """Count a refusal as a node event and log it (who, what, why)."""
        self.events[event] += 1
        log.info("request refused", extra={"event": event, "source": source,
                                           "method": request.method, "call_id": request.call_id,
                                           "detail": detail})


def _spelled(name: str) -> str:
    """An algorithm name as written in challenges (RFC 8760 §2.1)."""
    upper = name.upper()
    return upper[:-5] + "-sess" if upper.endswith("-SESS") else upper


def one_flow_per_instance(bindings: list[Binding], flows: FlowTokens,
                          events: Counter | None = None) -> list[Target]:
    """The targets for an AOR's bindings: RFC 5626 §5.3 sends a request to
    one flow of each UA instance, the one registered last; the instance's
    other flows wait in ``Target.alternates`` for a 430. A binding whose
    flow token does not verify (the flow key was replaced) is skipped and
    counted: it would reach the UA over some other way, or nowhere."""
    out: list[Target] = []
    instances: dict[str, list[tuple[float, Target]]] = {}
    for binding in bindings:
        try:
            target = binding_target(binding, flows)
        except ForgedFlowToken:
            if events is not None:
                events["flow_token_unreadable"] += 1
            continue
        if binding.instance is None or target.flow is None:
            out.append(target)
            continue
        group = instances.get(binding.instance)
        if group is None:
            instances[binding.instance] = group = []
            out.append(target)  # stands for the instance; replaced below
        group.append((binding.registered_at, target))
    for group in instances.values():
        group.sort(key=lambda entry: -entry[0])
        first = group[0][1]
        chosen = dataclasses.replace(first, alternates=tuple(t for _, t in group[1:]))
        for index, target in enumerate(out):
            if any(target is t for _, t in group):
                out[index] = chosen
                break
    return out


def binding_target(binding, flows: FlowTokens | None = None) -> Target:
    """A registered contact as a proxy target: its URI and Path, plus the
    flow it registered over when that flow must be reused — a connection
    (TCP/TLS/WS: the UA may accept nothing else, §18.2.2) or an RFC 5626
    outbound registration (reg-id). A plain UDP registration is reached at
    its Contact, which may differ from the REGISTER's source."""
    from cluster.sip import parse_name_addr, parse_uri
    path = tuple(binding.path)
    if path and flows is not None and FLOW_PARAM in path[0]:
        # Our own first Path entry names the flow (RFC 5626 §5.2,
        # cluster.proxy.flows): the edge and connection to use.
        registered = flows.of_uri(parse_name_addr(path[0]).uri)
        if registered is not None:
            return Target(uri=parse_uri(binding.contact), path=path[1:], flow=registered, q=binding.q)
    source = binding.source
    transport = getattr(source, "transport", None)
    flow = source is not None and (
        (transport is not None and transport.upper() != "UDP" and binding.conn is not None)
        or binding.reg_id is not None)
    return Target(
        uri=parse_uri(binding.contact) if isinstance(binding.contact, str) else binding.contact,
        path=tuple(binding.path),
        edge=binding.edge if flow else None,
        conn=binding.conn if flow else None,
        transport=transport if flow else None,
        received=(source.host, source.port) if flow else None,
        q=binding.q,
    )
