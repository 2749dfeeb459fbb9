"""REGISTER processing, RFC 3261 §10.3, sans-IO.

``process_register`` takes the request, the AOR's current bindings and the
time, and returns a ``RegisterResult``: the status, the response header
fields, and the writes (bindings to put, binding ids to delete) that make the
location service agree with the request. It reads no clock and touches no
store; ``store.register`` does the read-decide-write loop around it.

Rules applied, in §10.3 order (steps 1-4 — domain, Require, authentication,
authorisation — belong to the application in front of the registrar):

- step 5: the AOR is the To URI, which must be sip or sips (400 otherwise:
  RFC 4475 §3.3.4 unksm2, an ``isbn:`` To).
- step 6: ``Contact: *`` is valid only alone and with ``Expires: 0`` (400
  otherwise); it removes every binding, unless one of them has this Call-ID
  with a CSeq not lower than the request's, which aborts the request (500).
- step 7: each Contact's interval is its ``expires`` parameter, else the
  Expires header, else the policy default. 0 removes the binding; less than
  ``min_expires`` fails the whole request with 423 and a Min-Expires header,
  writing nothing; more than ``max_expires`` is shortened to it. A binding
  with the request's Call-ID and a CSeq not lower aborts the request (500);
  another Call-ID simply replaces it. RFC 5626 §6: a Contact with
  ``+sip.instance`` (and ``reg-id``) replaces that instance's flow even when
  its URI changed (see ``binding.binding_id``).
- step 8: the 200 lists every current binding with the seconds it has left;
  a REGISTER without Contact is a query and gets just that list.

Every failure is an ``Outcome``, mapped to its status, reason phrase and
extra header fields in ``REPLIES`` — the one table (Kamailio ``reply.c``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate

from cluster.sip.errors import ParseError
from cluster.sip.message import Request, Response
from cluster.sip.responses import make_response
from cluster.sip.uri import SipURI

from .binding import Binding, Source, binding_id

__all__ = [
    "DEFAULT_POLICY", "Outcome", "REPLIES", "RegisterResult", "RegistrarPolicy",
    "address_of_record", "failure", "process_register",
]


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    min_expires: int = 60
    """Shortest interval accepted; a shorter non-zero one gets 423 (§10.3 step 7)."""
    max_expires: int = 7200
    """Longest interval granted; a longer one is shortened to this."""
    default_expires: int = 3600
    """Interval for a Contact that asks for none (no parameter, no Expires)."""
    date_header: bool = False
    """Add a Date header to the 200 (§10.3 step 8 MAY, helps UAs without a clock)."""
    retry_after: int = 5
    """Retry-After seconds on 500/503 caused by the store, not by the request."""
    flow_timer: int | None = None
    """Seconds between a UA's keep-alives on an outbound flow, sent as
    Flow-Timer in the 200 that applies outbound (RFC 5626 §4.4.1, §6)."""


DEFAULT_POLICY = RegistrarPolicy()


class Outcome(enum.Enum):
    OK = "ok"
    MALFORMED = "malformed"                  # a header field failed to parse
    NOT_SIP_AOR = "not-sip-aor"              # §10.3 step 5, RFC 4475 unksm2
    BAD_WILDCARD = "bad-wildcard"            # §10.3 step 6
    INTERVAL_TOO_BRIEF = "interval-too-brief"  # §10.3 step 7
    OUT_OF_ORDER = "out-of-order"            # §10.3 steps 6/7: Call-ID/CSeq
    CONFLICT = "conflict"                    # concurrent writers kept winning
    STORE_UNAVAILABLE = "store-unavailable"  # etcd unreachable
    INTERNAL_ERROR = "internal-error"        # a bug met while processing


# The one table from outcome to reply: (status, reason phrase, add Retry-After).
REPLIES: dict[Outcome, tuple[int, str, bool]] = {
    Outcome.OK: (200, "OK", False),
    Outcome.MALFORMED: (400, "Bad Request", False),
    Outcome.NOT_SIP_AOR: (400, "Bad Request", False),
    Outcome.BAD_WILDCARD: (400, "Bad Request", False),
    Outcome.INTERVAL_TOO_BRIEF: (423, "Interval Too Brief", False),
    # §10.3 steps 6-7 only say the request "fails"; 500 is what deployed
    # registrars send for a stale CSeq.
    Outcome.OUT_OF_ORDER: (500, "Server Internal Error", False),
    # §21.5.1: a 500 may carry Retry-After when the condition is temporary.
    Outcome.CONFLICT: (500, "Server Internal Error", True),
    Outcome.STORE_UNAVAILABLE: (503, "Service Unavailable", True),
    Outcome.INTERNAL_ERROR: (500, "Server Internal Error", False),
}


@dataclass(frozen=True, slots=True)
class RegisterResult:
    outcome: Outcome
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    """Fields for the response: Contact (one per current binding), Min-Expires, ..."""
    puts: tuple[Binding, ...] = ()
    deletes: tuple[str, ...] = ()
    """Binding ids to remove."""
    bindings: tuple[Binding, ...] = ()
    """The AOR's bindings once the writes are done (what the 200 lists)."""
    aor: str | None = None
    detail: str = ""
    """Why a request failed, for logs and the Warning header."""

    @property
    def has_writes(self) -> bool:
        return bool(self.puts or self.deletes)

    def response(self, request: Request) -> Response:
        return make_response(request, self.status, self.reason, headers=self.headers)


def failure(outcome: Outcome, detail: str = "", *, policy: RegistrarPolicy = DEFAULT_POLICY,
            aor: str | None = None) -> RegisterResult:
    """The result for a failed REGISTER: status and fields from ``REPLIES``."""
    status, reason, retry = REPLIES[outcome]
    headers: list[tuple[str, str]] = []
    if outcome is Outcome.INTERVAL_TOO_BRIEF:
        # §10.3 step 7 / §20.23: the 423 says what the registrar will accept.
        headers.append(("Min-Expires", str(policy.min_expires)))
    if retry:
        headers.append(("Retry-After", str(policy.retry_after)))
    if detail:
        # §20.43: warn-code 399 (miscellaneous), text quoted.
        text = detail.replace("\\", "").replace('"', "'")
        headers.append(("Warning", f'399 registrar "{text}"'))
    return RegisterResult(outcome, status, reason, tuple(headers), aor=aor, detail=detail)


def address_of_record(request: Request) -> str | None:
    """§10.3 step 5: the canonical AOR of the To URI, None when it is not a
    SIP/SIPS URI (or the To field is unusable)."""
    try:
        uri = request.to.uri
    except ParseError:
        return None
    return uri.aor() if isinstance(uri, SipURI) else None


def process_register(
    request: Request,
    *,
    now: float,
    current: Iterable[Binding],
    policy: RegistrarPolicy = DEFAULT_POLICY,
    source: Source | None = None,
    edge: str | None = None,
    conn: int | None = None,
    flow_path: str | None = None,
) -> RegisterResult:
    """Decide a REGISTER against ``current`` (expired entries are ignored).
    ``flow_path``: the Path entry naming the flow the REGISTER came over
    (``cluster.proxy.flows``), stored first in each binding's Path."""
    try:
        return _process(request, now, current, policy, source, edge, conn, flow_path)
    except ParseError as exc:
        return failure(Outcome.MALFORMED, exc.reason, policy=policy)


def _process(
    request: Request, now: float, current: Iterable[Binding], policy: RegistrarPolicy,
    source: Source | None, edge: str | None, conn: int | None, flow_path: str | None = None,
) -> RegisterResult:
    to_uri = request.to.uri
    if not isinstance(to_uri, SipURI):
        return failure(Outcome.NOT_SIP_AOR, f"To URI scheme {to_uri.scheme!r} is not sip or sips",
                       policy=policy)
    aor = to_uri.aor()
    call_id = request.call_id
    cseq = request.cseq.seq
    header_expires = request.expires
    # Only unexpired bindings exist as far as §10.3 is concerned; expired
    # ones linger in the store until their lease ends.
    stored = {b.binding_id: b for b in current if b.expires_at > now}

    if request.contact_star:
        # §10.3 step 6.
        if header_expires != 0:
            return failure(Outcome.BAD_WILDCARD, "Contact: * requires Expires: 0", policy=policy, aor=aor)
        for b in stored.values():
            if b.call_id == call_id and cseq <= b.cseq:
                return failure(Outcome.OUT_OF_ORDER, f"CSeq {cseq} not above stored {b.cseq}",
                               policy=policy, aor=aor)
        return _ok(request, aor, now, policy, (), (), tuple(stored), False)

    contacts = request.contacts
    if not contacts:
        # §10.3 step 8 with nothing to change: a query.
        return _ok(request, aor, now, policy, tuple(stored.values()), (), (), False)

    # First pass: intervals. A 423 must leave the store untouched, so it is
    # decided before any binding is touched.
    intervals: list[int] = []
    for contact in contacts:
        expires = contact.expires
        if expires is None:
            expires = header_expires if header_expires is not None else policy.default_expires
        if 0 < expires < policy.min_expires:
            return failure(Outcome.INTERVAL_TOO_BRIEF, f"expires {expires} below {policy.min_expires}",
                           policy=policy, aor=aor)
        intervals.append(expires if expires <= policy.max_expires else policy.max_expires)

    path = tuple(str(p) for p in request.paths)
    if flow_path is not None:
        # RFC 5626 §5.2: the first hop's Path entry names the flow.
        path = (flow_path, *path)
    user_agent = request.user_agent
    result = dict(stored)
    puts: dict[str, Binding] = {}
    deletes: list[str] = []
    outbound = False
    for contact, expires in zip(contacts, intervals):
        instance = contact.instance
        # RFC 5626 §6: reg-id means nothing without an instance.
        reg_id = contact.reg_id if instance is not None else None
        outbound = outbound or reg_id is not None
        uri = contact.uri
        bid = binding_id(aor, uri, instance, reg_id)
        old = stored.get(bid)
        if old is not None and old.call_id == call_id and cseq <= old.cseq:
            # §10.3 step 7: a retransmission or a reordered REGISTER must not
            # undo a newer one.
            return failure(Outcome.OUT_OF_ORDER, f"CSeq {cseq} not above stored {old.cseq}",
                           policy=policy, aor=aor)
        if expires == 0:
            puts.pop(bid, None)
            if result.pop(bid, None) is not None and bid in stored:
                deletes.append(bid)
            continue
        binding = Binding(
            aor=aor, contact=str(uri), expires_at=now + expires, call_id=call_id, cseq=cseq,
            q=contact.q, instance=instance, reg_id=reg_id, path=path, source=source, edge=edge,
            conn=conn, user_agent=user_agent, registered_at=now, binding_id=bid,
        )
        result[bid] = binding
        puts[bid] = binding
        if bid in deletes:
            deletes.remove(bid)
    outbound = outbound and "outbound" in request.supported
    return _ok(request, aor, now, policy, tuple(result.values()), tuple(puts.values()),
               tuple(deletes), outbound)


def _ok(
    request: Request, aor: str, now: float, policy: RegistrarPolicy, bindings: tuple[Binding, ...],
    puts: tuple[Binding, ...], deletes: tuple[str, ...], outbound: bool,
) -> RegisterResult:
    headers = [("Contact", _contact_value(b, now)) for b in bindings]
    if request.paths and "path" in request.supported:
        # RFC 3327 §5.3: echo the stored Path to a UA that supports it.
        headers.extend(("Path", str(p)) for p in request.paths)
    if outbound:
        # RFC 5626 §6: the registrar confirms it applied outbound semantics.
        headers.append(("Require", "outbound"))
        if policy.flow_timer:
            # §4.4.1: how often the UA must send keep-alives on the flow.
            headers.append(("Flow-Timer", str(policy.flow_timer)))
    if policy.date_header:
        headers.append(("Date", formatdate(now, usegmt=True)))
    status, reason, _ = REPLIES[Outcome.OK]
    return RegisterResult(Outcome.OK, status, reason, tuple(headers), puts, deletes, bindings, aor)


def _contact_value(binding: Binding, now: float) -> str:
    # §10.3 step 8: each binding with its remaining interval.
    value = f"<{binding.contact}>;expires={binding.remaining(now)}"
    if binding.q is not None:
        value += f";q={binding.q:.3g}"
    if binding.instance is not None:
        value += f';+sip.instance="<{binding.instance}>"'
        if binding.reg_id is not None:
            value += f";reg-id={binding.reg_id}"
    return value
