"""No open relay, no caller-ID spoofing (issue 15 parts 1 and 5): the
default application's decisions with the worker's real Services (users in a
UserCache, stateless nonces and dialog tokens), per method, from a source
inside and outside the trusted networks. The end-to-end version from a
network namespace is tests/e2e/test_trust_netns.py."""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import pytest

from cluster.app import default
from cluster.app.api import Call, Challenge, Proxy, Reply
from cluster.auth.digest import credential
from cluster.auth.users import UserCache, make_user_record, validate_settings
from cluster.proxy.routing import LocalAddresses, TOKEN_PARAM, preprocess_routes, record_route_set
from cluster.sip import parse_message
from nodes.worker.services import SECURITY_EVENTS, Services

US = "198.51.100.1:5060"
OUTSIDE = "203.0.113.9"
METHODS = ("INVITE", "MESSAGE", "REFER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "UPDATE", "OPTIONS")


def _services(settings_bob=None, **kw) -> Services:
    records = [("/sc/users/alice@example.com", make_user_record("alice@example.com", "pw-alice")),
               ("/sc/users/bob@example.com", make_user_record("bob@example.com", "pw-bob",
                                                               settings=settings_bob))]
    users = UserCache.from_kvs(1, [(k, json.dumps(v).encode()) for k, v in records])
    services = Services(domains=["example.com"], trusted=["127.0.0.0/8"], nonce_secret=b"s" * 32,
                        nonce_ttl=300, locations=None, users=users, **kw)
    services.learn_advertise(US)
    return services


def _request(method="INVITE", uri="sip:carol@example.com", *, from_="sip:alice@example.com",
             to_tag=None, routes=(), call_id=None, extra=()):
    to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [f"{method} {uri} SIP/2.0", "Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK" + uuid.uuid4().hex,
             f"From: <{from_}>;tag=caller1", f"To: {to}", f"Call-ID: {call_id or uuid.uuid4().hex}",
             f"CSeq: 1 {method}", "Max-Forwards: 70", *(f"Route: {r}" for r in routes), *extra,
             "Content-Length: 0", "", ""]
    return parse_message("\r\n".join(lines).encode())


def _decide(services, request, host=OUTSIDE):
    """What the TU does before the application: §16.4 route preprocessing."""
    routed = preprocess_routes(request, services.local)
    source = SimpleNamespace(host=host, transport="UDP", port=5060, context=None)
    call = Call(request, source, services, "w1", routed=routed)
    return call, default.route(call)


def _authorize(services, request, challenge_response, username, password):
    field = credential(challenge_response.proxy_authenticates[0], username=username, password=password,
                       method=request.method, uri=str(request.uri), cnonce="c0ffee")
    request.add("Proxy-Authorization", str(field))
    return request


def _challenge(services, request):
    call, decision = _decide(services, request)
    assert isinstance(decision, Challenge) and decision.proxy, decision
    return services.challenge(request, decision, OUTSIDE)


@pytest.mark.parametrize("method", METHODS)
def test_forged_to_tag_to_a_foreign_target_is_refused(method):
    services = _services()
    _, decision = _decide(services, _request(method, "sip:x@foreign.test", from_="sip:eve@evil.test",
                                             to_tag="forged"))
    assert isinstance(decision, Reply) and decision.status == 403
    assert services.events["dialog_refused"] == 1
    # The same from a trusted network is a peer's in-dialog request: proxied.
    _, decision = _decide(services, _request(method, "sip:x@foreign.test", to_tag="t"), host="127.0.0.1")
    assert isinstance(decision, Proxy)


@pytest.mark.parametrize("method", METHODS)
def test_forged_route_set_is_refused(method):
    services = _services()
    for routes in (["<sip:relay.foreign.test;lr>"],
                   # naming the cluster several times, then a foreign hop
                   [f"<sip:{US};lr>", f"<sip:{US};lr>", "<sip:relay.foreign.test;lr>", f"<sip:{US};lr>"]):
        _, decision = _decide(services, _request(method, "sip:x@foreign.test", from_="sip:eve@evil.test",
                                                 routes=routes))
        assert isinstance(decision, Reply) and decision.status == 403, routes
    assert services.events["relay_refused"] == 2


@pytest.mark.parametrize("method", METHODS)
def test_forged_cluster_route_with_a_to_tag_is_refused(method):
    services = _services()
    token = services.tokens.make("another-call", "caller1")
    for route in (f"<sip:{US};lr>", f"<sip:{US};{TOKEN_PARAM}={token};lr>",
                  f"<sip:{US};{TOKEN_PARAM}=%C3%A9;lr>"):
        _, decision = _decide(services, _request(method, "sip:x@foreign.test", to_tag="t", routes=[route],
                                                 call_id="this-call"))
        assert isinstance(decision, Reply) and decision.status == 403, route


@pytest.mark.parametrize("method", METHODS)
def test_local_from_without_credentials_is_challenged(method):
    services = _services()
    call, decision = _decide(services, _request(method, "sip:carol@example.com"))
    assert isinstance(decision, Challenge) and decision.proxy
    # Trusted sources are challenged only for INVITE (as before).
    _, decision = _decide(services, _request(method, "sip:carol@example.com"), host="127.0.0.1")
    assert isinstance(decision, Challenge) == (method == "INVITE")


@pytest.mark.parametrize("method", METHODS)
def test_bob_claiming_alice_is_refused(method):
    services = _services()
    request = _request(method)
    response = _challenge(services, request)
    _authorize(services, request, response, "bob", "pw-bob")
    _, decision = _decide(services, request)
    assert isinstance(decision, Reply) and decision.status == 403 and decision.reason == "Not Your Identity"
    assert services.events["identity_refused"] == 1


def test_owner_passes_and_is_asserted_untrusted_claims_are_not_kept():
    services = _services()
    request = _request("MESSAGE", extra=["P-Asserted-Identity: <sip:ceo@example.com>",
                                         "P-Preferred-Identity: <sip:ceo@example.com>"])
    response = _challenge(services, request)
    _authorize(services, request, response, "alice", "pw-alice")
    call, decision = _decide(services, request)
    # carol is not registered: 404, but the identity check passed first.
    assert isinstance(decision, Reply) and decision.status == 404
    assert call.identity == "sip:alice@example.com"
    assert request.get_all("p-asserted-identity") == ["<sip:alice@example.com>"]
    assert not request.has("p-preferred-identity")


def test_identities_setting_maps_another_aor():
    with pytest.raises(ValueError, match="identities"):
        validate_settings({"identities": "not a uri"})
    services = _services(settings_bob={"identities": "sip:alice@example.com, sips:sales@example.com"})
    request = _request("INVITE")
    response = _challenge(services, request)
    _authorize(services, request, response, "bob", "pw-bob")
    call, decision = _decide(services, request)
    assert not (isinstance(decision, Reply) and decision.status == 403)
    assert call.identity == "sip:alice@example.com"


def test_replayed_credentials_with_an_old_nonce_get_a_stale_challenge():
    services = _services()
    request = _request("MESSAGE")
    response = _challenge(services, request)
    _authorize(services, request, response, "alice", "pw-alice")
    services.nonces.ttl = 0.5  # the captured nonce grows old
    time.sleep(1.1)
    _, decision = _decide(services, request)
    assert isinstance(decision, Challenge) and decision.stale
    assert services.events["auth_failed"] == 0  # the password was right


def test_wrong_password_is_counted():
    services = _services()
    request = _request("MESSAGE")
    _authorize(services, request, _challenge(services, request), "alice", "guess")
    _, decision = _decide(services, request)
    assert isinstance(decision, Challenge) and not decision.stale
    assert services.events["auth_failed"] == 1


def _dialog_request(services, method, rr, *, uri="sip:callee@192.0.2.80:5062", from_tag="caller1",
                    to_tag="callee1", call_id="dlg-1"):
    request = _request(method, uri, from_="sip:eve@evil.test", to_tag=to_tag, call_id=call_id,
                       routes=[rr.strip()])
    if from_tag != "caller1":
        request.set("From", f"<sip:callee@example.com>;tag={from_tag}")
        request.set("To", "<sip:eve@evil.test>;tag=caller1")
    return request


@pytest.mark.parametrize("method", ["BYE", *METHODS])
def test_in_dialog_request_through_our_token_passes(method):
    services = _services()
    # An authenticated (open) dialog: either side, any target.
    (rr,) = record_route_set(US, "UDP", "UDP", services.tokens.make("dlg-1", "caller1"))
    _, decision = _decide(services, _dialog_request(services, method, rr))
    assert isinstance(decision, Proxy)
    _, decision = _decide(services, _dialog_request(services, method, rr, from_tag="callee1",
                                                    uri="sip:eve@203.0.113.9"))
    assert isinstance(decision, Proxy)
    # The token of another Call-ID is refused.
    _, decision = _decide(services, _dialog_request(services, method, rr, call_id="dlg-2"))
    assert isinstance(decision, Reply) and decision.status == 403


def test_scoped_token_of_an_unauthenticated_call_reaches_only_the_callee():
    services = _services()
    scope = services.tokens.scope_for("192.0.2.80")
    (rr,) = record_route_set(US, "UDP", "UDP", services.tokens.make("dlg-1", "caller1", scope))
    _, decision = _decide(services, _dialog_request(services, "BYE", rr))
    assert isinstance(decision, Proxy)  # to the callee's host
    _, decision = _decide(services, _dialog_request(services, "INVITE", rr, uri="sip:x@foreign.test"))
    assert isinstance(decision, Reply) and decision.status == 403  # elsewhere: a relay
    # The callee (at that host) talks back to the caller.
    _, decision = _decide(services, _dialog_request(services, "BYE", rr, from_tag="callee1",
                                                    uri="sip:eve@203.0.113.9"), host="192.0.2.80")
    assert isinstance(decision, Proxy)


def test_ack_and_cancel_are_not_challenged():
    services = _services()
    _, decision = _decide(services, _request("CANCEL", "sip:carol@example.com"))
    assert not isinstance(decision, Challenge)


def test_sha256_domain_offers_and_accepts_sha256_only(caplog):
    services = _services(digest_sha256_domains=("example.com",))
    request = _request("MESSAGE")
    response = _challenge(services, request)
    assert [f.get("algorithm") for f in response.proxy_authenticates] == ["SHA-256"]
    md5_only = _services()  # the client answers an MD5 challenge of its own making
    md5_request = _request("MESSAGE", call_id=request.call_id)
    _authorize(md5_only, md5_request, _challenge(md5_only, md5_request), "alice", "pw-alice")
    caplog.set_level("WARNING", "sipcluster.worker")
    _, decision = _decide(services, md5_request)
    assert isinstance(decision, Challenge)
    assert "algorithm it was not offered" in caplog.text
    assert services.events["auth_failed"] == 1
    # Default: MD5 first, SHA-256 too.
    assert _services().algorithms_for("example.com") == ("MD5", "SHA-256")


def test_unanswered_challenge_is_logged_once_with_the_cause(caplog):
    services = _services()
    request = _request("MESSAGE")
    _challenge(services, request)
    caplog.set_level("WARNING", "sipcluster.worker")
    assert services.unanswered_challenges(time.time()) == 0
    assert services.unanswered_challenges(time.time() + 33) == 1
    assert services.unanswered_challenges(time.time() + 66) == 0
    record = next(r for r in caplog.records if "never answered" in r.getMessage())
    assert record.source == OUTSIDE and record.offered == "MD5,SHA-256"
    assert services.events["challenge_unanswered"] == 1
    # An answered challenge is not reported.
    request = _request("MESSAGE")
    _authorize(services, request, _challenge(services, request), "alice", "pw-alice")
    _decide(services, request)
    assert services.unanswered_challenges(time.time() + 33) == 0


def test_outstanding_challenges_are_bounded():
    services = _services()
    services.challenges.limit = 100
    for i in range(250):
        services.challenge(_request("MESSAGE", call_id=f"c{i}"), Challenge("example.com", True), OUTSIDE)
    assert len(services.challenges) == 100 and services.challenges.dropped == 150


def test_security_events_are_the_ones_counted():
    assert set(SECURITY_EVENTS) == {"relay_refused", "dialog_refused", "identity_refused", "auth_failed",
                                    "auth_banned"}


def test_preprocess_routes_returns_our_removed_entries():
    local = LocalAddresses([US])
    request = _request("BYE", "sip:x@192.0.2.80", to_tag="t",
                       routes=[f"<sip:{US};{TOKEN_PARAM}=abc;lr>", f"<sip:{US};lr>", "<sip:p.test;lr>"])
    routed = preprocess_routes(request, local)
    assert [u.param(TOKEN_PARAM) for u in routed] == ["abc", None]
    assert [str(r.uri) for r in request.routes] == ["sip:p.test;lr"]


def test_alert_rule_covers_every_security_event():
    from pathlib import Path
    import yaml
    rules = yaml.safe_load((Path(__file__).resolve().parents[2] / "ops/alerts/sipcluster.rules.yml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == "SipclusterTrustRefusals"]
    for event in SECURITY_EVENTS:
        assert event in rule["expr"]
