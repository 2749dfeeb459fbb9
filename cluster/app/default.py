"""The built-in application: registrar, authenticated proxy, call forwarding.

Written with the same public API an operator uses (``cluster.app.api``):

- REGISTER for a local domain: digest authentication (401), the
  authenticated user must own the AOR (403), then the registrar (§10.3).
- A request whose From names a user of a local domain is authenticated
  (407) when it is an INVITE or comes from outside the trusted networks
  (every method but REGISTER, ACK and CANCEL, which cannot be challenged,
  §22.1), unless it belongs to a dialog the cluster record-routed. The
  authenticated user must own that identity or have it among its
  ``identities`` setting (403 otherwise); it is then asserted to the next
  hops in P-Asserted-Identity (RFC 3325).
- In-dialog requests (To tag) from outside the trusted networks must come
  through the cluster's own Record-Route with a valid dialog token for
  their Call-ID and tags (403 otherwise), so a forged To tag or Route set
  relays nothing.
- A request for a local AOR: per-user unconditional forwarding, else the
  registered contacts (parallel forking; serial by q when the user's
  ``serial`` setting is on), 480 when the user exists but is not registered,
  404 when there is no such user. Busy (486/600) and no-answer (the user's
  ``noanswer_timeout``) forward to ``forward_busy`` / ``forward_noanswer``.
- Domains listed in ``redirect_domains`` answer 302 with the contacts instead.
- Requests for other domains, or with a Route set beyond the cluster, are
  relayed — only from trusted networks (default loopback); anything else
  gets 403, so the cluster is never an open relay. Without a Route set they
  go to the destination set ``dispatcher.foreign_set`` when one is
  configured (members in the set's policy order, failover on 503 and
  timeouts), else through ``worker.outbound_proxy``, else to the
  Request-URI's host.
- OPTIONS addressed to the cluster itself is answered here, naming the shard.
"""

from __future__ import annotations

from cluster.sip import SipURI, parse_uri

from .api import Application, Call, Target

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER"
SHARD_HEADER = "X-Sipcluster-Shard"
BANNED_REASON = "Temporarily Blocked"

application = Application("default")


@application.request("REGISTER")
def register(call: Call):
    request = call.request
    if not call.is_local(request.uri) and not call.is_local(request.to.uri):
        return relay(call)
    auth = call.authenticate()
    if auth.banned:
        return call.reply(403, BANNED_REASON)
    if not auth.ok:
        return call.challenge(stale=auth.stale)
    record = call.services.authenticated_record(auth.username, call.default_realm())
    to = request.to.uri
    if record is None or not isinstance(to, SipURI) or not record.owns(to.aor()):
        # DESIGN §8: the authenticated user must own the AOR it registers.
        return call.reply(403, "Not Your Address-of-Record")
    return call.register()


# Requests that cannot be challenged (§22.1): ACK and CANCEL follow the fate
# of their INVITE; REGISTER is challenged by the registrar path (401).
UNCHALLENGED = frozenset({"ACK", "CANCEL", "REGISTER"})


@application.request("*")
def route(call: Call):
    request = call.request
    uri = request.uri
    if request.method == "OPTIONS" and not request.routes and (
        (isinstance(uri, SipURI) and not uri.user) or call.services.local.is_us(uri)
    ):
        return call.reply(200, headers=[("Allow", ALLOW), ("Accept", "application/sdp"),
                                        (SHARD_HEADER, call.shard)])
    trusted = call.from_trusted
    if request.to.tag is not None:
        # In-dialog: the Route set (our Record-Route removed) decides the
        # hop — from outside only within a dialog we set up (no relay by a
        # forged To tag or Route set).
        if not trusted and not call.in_our_dialog:
            return call.refuse(403, "Not A Dialog Of This Cluster", event="dialog_refused",
                               detail="to tag without a valid dialog token in our Route")
        return call.proxy([uri], record_route=False)
    if request.routes or not call.is_local(uri):
        return relay(call)  # a foreign target, or a route set beyond us
    refused = check_identity(call, trusted)
    if refused is not None:
        return refused
    call.state["aor"] = uri
    settings = call.settings(uri)
    forward = settings.get("forward_always")
    if forward:
        call.state["forwarded"] = True
        return proxy_to(call, forward)
    targets = call.lookup(uri)
    if not targets:
        return call.reply(480 if call.services.user(uri) is not None else 404)
    if isinstance(uri, SipURI) and uri.host.lower() in application.redirect_domains:
        return call.redirect(targets)
    timeout = settings.get("noanswer_timeout") if settings.get("forward_noanswer") else None
    return call.proxy(targets, parallel=not settings.get("serial"), timeout=timeout)


def check_identity(call: Call, trusted: bool):
    """A From naming a local user is proved (RFC 3261 §22.3 proxy
    authentication) and must belong to the authenticated user; None when the
    request may go on, else the challenge or refusal."""
    request = call.request
    from_ = request.from_.uri
    if request.method in UNCHALLENGED or not call.is_local(from_):
        return None
    if trusted and request.method != "INVITE":
        return None
    auth = call.authenticate(proxy=True)
    if auth.banned:
        return call.reply(403, BANNED_REASON)
    if not auth.ok:
        return call.challenge(proxy=True, stale=auth.stale)
    record = call.services.authenticated_record(auth.username, call.default_realm())
    aor = from_.aor() if isinstance(from_, SipURI) else ""
    if record is None or not record.may_use(aor):
        return call.refuse(403, "Not Your Identity", event="identity_refused",
                           detail=f"user {auth.username!r} claimed {aor}")
    call.assert_identity(aor)
    return None


@application.failure
def forward_on_failure(call: Call, best):
    aor = call.state.get("aor")
    if aor is None or call.state.get("forwarded"):
        return None
    settings = call.settings(aor)
    if best.status in (486, 600) and settings.get("forward_busy"):
        target = settings["forward_busy"]
    elif best.status in (408, 480, 487) and settings.get("forward_noanswer"):
        target = settings["forward_noanswer"]
    else:
        return None
    call.state["forwarded"] = True
    return proxy_to(call, target)


def proxy_to(call: Call, target: str):
    """Forward to ``target``; a local AOR goes to its registered contacts."""
    uri = parse_uri(target)
    if call.is_local(uri):
        contacts = call.lookup(uri)
        if not contacts:
            return call.reply(480)
        return call.proxy(contacts)
    return call.proxy([uri])


def relay(call: Call):
    """Requests for other domains: only from trusted networks (no open relay),
    through the configured outbound proxy when there is one."""
    if not call.from_trusted:
        routes = call.request.routes
        detail = (f"route set {routes[0]} ... ({len(routes)} entries)" if routes
                  else f"foreign target {call.request.uri}")
        return call.refuse(403, "Relaying Denied", event="relay_refused", detail=detail)
    foreign_set = getattr(call.services, "foreign_set", None)
    if foreign_set and not call.request.routes:
        return call.proxy([call.destination_set(foreign_set)])
    outbound = getattr(call.services, "outbound_proxy", None)
    if outbound:
        # The outbound proxy becomes the first Route (loose routing, §16.6
        # step 6); the Request-URI stays the foreign target.
        return call.proxy([Target(call.request.uri, path=(f"<{outbound};lr>",))])
    return call.proxy([call.request.uri])
