"""The transaction user's side of destination sets (``cluster.dispatch``):
turning the application's ``SetTarget`` into an ordered list of members for
one branch slot, and the OPTIONS request that probes a member.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

from cluster.app.api import SetTarget, Target
from cluster.dispatch import Dispatcher
from cluster.proxy.context import Alternatives
from cluster.sip import URI, Request, SipURI, parse_uri

Slot = tuple[Target, URI | Alternatives]
"""What one decision target becomes: the target (Path, edge) and what the
response context forwards to."""

NO_MEMBER_UP = "No Destination Available"


def expand(dispatcher: Dispatcher | None, targets: Iterable[Target | SetTarget], request: Request,
           stats: Counter[str]) -> tuple[list[Slot], list[str]]:
    """The slots to forward to, and the sets that offered no member up
    (unknown sets among them), each counted in ``stats``."""
    slots: list[Slot] = []
    empty: list[str] = []
    for target in targets:
        if isinstance(target, Target):
            slots.append((target, target.uri))
            continue
        members = dispatcher.choose(target.name, request.call_id) if dispatcher is not None else None
        if not members:
            stats["dispatch_unknown_set" if members is None else "dispatch_no_member_up"] += 1
            empty.append(target.name)
            continue
        uris = tuple(towards(request.uri, parse_uri(m.uri)) for m in members)
        stats["dispatch_chosen"] += 1
        slots.append((Target(uris[0]), Alternatives(uris, target.name, tuple(m.uri for m in members))))
    return slots, empty


def towards(request_uri: URI, member: URI) -> URI:
    """The Request-URI for a member: a member without a user part is a
    gateway or proxy, so the request keeps its user (``sip:carol@gw1:5060``
    for ``sip:carol@carrier.example`` sent to ``sip:gw1:5060``); a member
    with one (``sip:ivr@media1``) is the target itself."""
    if not isinstance(member, SipURI) or member.user is not None:
        return member
    if isinstance(request_uri, SipURI) and request_uri.user is not None:
        return dataclasses.replace(member, user=request_uri.user, password=None)
    return member


def warning(agent: str, sets: list[str]) -> tuple[str, str]:
    """RFC 3261 §20.43: why no branch could be started (399: miscellaneous)."""
    names = ", ".join(sets)
    return "Warning", f'399 {agent} "destination set {names}: no member is up or no such set"'


def probe_request(uri: URI, *, token: str, sent_by: str, shard_param: str) -> Request:
    """An OPTIONS to a set member (RFC 3261 §11): Max-Forwards 0 would be
    answered by the first proxy instead of the member, so 70; our Via names
    this shard so the edges return the answer here. ``token`` (fresh
    randomness, letters and digits) makes the branch, tag and Call-ID."""
    return Request("OPTIONS", uri, [
        ("Via", f"SIP/2.0/UDP {sent_by};branch=z9hG4bK{token};rport;{shard_param}"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:sipcluster@{sent_by}>;tag={token}"),
        ("To", f"<{uri}>"),
        ("Call-ID", f"{token}@probe"),
        ("CSeq", "1 OPTIONS"),
        ("Accept", "application/sdp"),
        ("Content-Length", "0"),
    ])
