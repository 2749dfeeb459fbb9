"""Digest authentication: RFC vectors, stateless nonces, SIP round trips."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.auth.digest import (
    ALGORITHMS, MD5, MD5_SESS, SHA256, SHA256_SESS, NonceManager, challenge, credential,
    find_credential, ha1, request_digest, verify,
)
from cluster.sip.auth import AuthField, make_auth, parse_auth

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "example.com"
NOW = 1_700_000_000.0
PASSWORDS = {("alice", REALM): "wonderland", ("bob", REALM): "builder"}


def lookup(username: str, realm: str, algorithm: str) -> str | None:
    password = PASSWORDS.get((username, realm))
    return None if password is None else ha1(username, realm, password, algorithm)


class AcceptAny:
    """A nonce checker for RFC vectors, whose nonces are not ours."""

    def __init__(self, answer: str = "ok") -> None:
        self.answer = answer

    def check(self, nonce: str, now: float, *, realm: str) -> str:
        return self.answer


@pytest.fixture
def nonces() -> NonceManager:
    return NonceManager(SECRET, ttl=300)


def answer(nonces: NonceManager, *, algorithm: str = SHA256, username: str = "alice",
           password: str = "wonderland", method: str = "REGISTER", now: float = NOW,
           realm: str = REALM, nonce: str | None = None) -> AuthField:
    nonce = nonce if nonce is not None else nonces.make(now, realm=realm)
    (offer,) = challenge(realm, nonce, algorithms=(algorithm,))
    return credential(offer, username=username, password=password, method=method,
                      uri=f"sip:{realm}", cnonce="0a4f113b")


def check(cred: AuthField, nonces, *, method: str = "REGISTER", now: float = NOW, **kw):
    return verify(cred, method=method, realm=kw.pop("realm", REALM), now=now, nonces=nonces,
                  ha1=kw.pop("ha1", lookup), **kw)


# --- RFC test vectors ---------------------------------------------------------

RFC2617_HEADER = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
    'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def test_rfc2617_section_3_5_example():
    secret = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert secret == "939e7578ed9e3c518a452acee763bce9"
    assert request_digest(MD5, secret, nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                          method="GET", uri="/dir/index.html", qop="auth", nc="00000001",
                          cnonce="0a4f113b") == "6629fae49393a05397450978507c4ef1"
    result = verify(parse_auth(RFC2617_HEADER), method="GET", realm="testrealm@host.com",
                    now=NOW, nonces=AcceptAny(),
                    ha1=lambda u, r, a: secret if (u, r, a) == ("Mufasa", "testrealm@host.com", MD5) else None)
    assert result.ok and result.username == "Mufasa" and result.algorithm == MD5


RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize("algorithm, response", [
    (MD5, "8ca523f5e9506fed4657c9700eebdbec"),
    (SHA256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_section_3_9_1_examples(algorithm, response):
    realm = "http-auth@example.org"
    secret = ha1("Mufasa", realm, "Circle of Life", algorithm)
    assert request_digest(algorithm, secret, nonce=RFC7616_NONCE, method="GET",
                          uri="/dir/index.html", qop="auth", nc="00000001",
                          cnonce=RFC7616_CNONCE) == response
    header = (
        f'Digest username="Mufasa", realm="{realm}", uri="/dir/index.html", '
        f'algorithm={algorithm}, nonce="{RFC7616_NONCE}", nc=00000001, '
        f'cnonce="{RFC7616_CNONCE}", qop=auth, response="{response}", opaque="{RFC7616_OPAQUE}"'
    )
    result = verify(parse_auth(header), method="GET", realm=realm, now=NOW, nonces=AcceptAny(),
                    ha1=lambda u, r, a: secret if a == algorithm else None)
    assert result.ok and result.algorithm == algorithm
    # The same credential with our real nonce manager: the response is right
    # but the nonce is not ours, so the UAC is re-challenged with stale=true.
    ours = verify(parse_auth(header), method="GET", realm=realm, now=NOW,
                  nonces=NonceManager(SECRET), ha1=lambda u, r, a: secret)
    assert not ours.ok and ours.stale and "not issued" in ours.reason


def test_rfc7616_challenge_answered_by_credential_reproduces_the_example():
    offer = make_auth("Digest", realm="http-auth@example.org", qop="auth, auth-int",
                      algorithm=SHA256, nonce=RFC7616_NONCE, opaque=RFC7616_OPAQUE)
    cred = credential(offer, username="Mufasa", password="Circle of Life", method="GET",
                      uri="/dir/index.html", cnonce=RFC7616_CNONCE)
    assert cred.get("response") == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert cred.get("opaque") == RFC7616_OPAQUE
    assert (cred.get("qop"), cred.get("nc")) == ("auth", "00000001")


def test_sess_variants_derive_session_ha1():
    secret = ha1("alice", REALM, "wonderland", MD5)
    plain = request_digest(MD5, secret, nonce="n", method="INVITE", uri="sip:b@x",
                           qop="auth", nc="00000001", cnonce="c")
    sess = request_digest(MD5_SESS, secret, nonce="n", method="INVITE", uri="sip:b@x",
                          qop="auth", nc="00000001", cnonce="c")
    assert sess != plain
    assert ha1("alice", REALM, "wonderland", MD5_SESS) == secret
    with pytest.raises(ValueError):
        request_digest(SHA256_SESS, secret, nonce="n", method="INVITE", uri="sip:b@x")


# --- nonces -------------------------------------------------------------------


def test_nonce_is_deterministic_url_safe_and_fresh(nonces):
    nonce = nonces.make(NOW, realm=REALM)
    assert len(nonce) == 28 and all(c.isalnum() or c in "-_" for c in nonce)
    assert nonces.make(NOW + 0.5, realm=REALM) == nonce  # same second, no randomness
    assert nonces.make(NOW + 1, realm=REALM) != nonce
    assert nonces.check(nonce, NOW, realm=REALM) == "ok"
    # Any shard with the same secret accepts it.
    assert NonceManager(SECRET, ttl=300).check(nonce, NOW + 10, realm=REALM) == "ok"


def test_nonce_stale_after_ttl(nonces):
    nonce = nonces.make(NOW, realm=REALM)
    assert nonces.check(nonce, NOW + 300, realm=REALM) == "ok"
    assert nonces.check(nonce, NOW + 301, realm=REALM) == "stale"
    assert nonces.check(nonce, NOW + 10 * 86400, realm=REALM) == "stale"


def test_nonce_from_the_future_beyond_skew_is_invalid(nonces):
    nonce = nonces.make(NOW + 5, realm=REALM)
    assert nonces.check(nonce, NOW, realm=REALM) == "ok"
    nonce = nonces.make(NOW + 6, realm=REALM)
    assert nonces.check(nonce, NOW, realm=REALM) == "invalid"


def test_nonce_bound_to_realm_and_secret(nonces):
    nonce = nonces.make(NOW, realm=REALM)
    assert nonces.check(nonce, NOW, realm="other.example.com") == "invalid"
    assert NonceManager(b"x" * 32).check(nonce, NOW, realm=REALM) == "invalid"


def test_tampered_nonce_is_invalid(nonces):
    nonce = nonces.make(NOW, realm=REALM)
    for i in (0, 6, 27):  # timestamp, tag, last character
        flipped = nonce[:i] + ("A" if nonce[i] != "A" else "B") + nonce[i + 1:]
        assert nonces.check(flipped, NOW, realm=REALM) == "invalid"


@pytest.mark.parametrize("nonce", [
    "", "short", "A" * 27, "A" * 29, "A" * 27 + "=", "A" * 27 + "+", "A" * 27 + "é", "A" * 26 + "\n\n",
])
def test_malformed_nonce_is_invalid(nonces, nonce):
    assert nonces.check(nonce, NOW, realm=REALM) == "invalid"


def test_alphabet_aliases_are_not_accepted(nonces):
    # b64decode reads '+' and '/' like '-' and '_'; the check must not.
    nonce = next(n for n in (nonces.make(NOW + i, realm=REALM) for i in range(200))
                 if "-" in n or "_" in n)
    assert nonces.check(nonce, NOW + 200, realm=REALM) == "ok"
    aliased = nonce.replace("-", "+").replace("_", "/")
    assert nonces.check(aliased, NOW + 200, realm=REALM) == "invalid"


def test_retired_secret_still_validates_during_rotation():
    old = NonceManager(b"o" * 32)
    nonce = old.make(NOW, realm=REALM)
    rotated = NonceManager(b"n" * 32, retired=[b"o" * 32])
    assert rotated.check(nonce, NOW + 1, realm=REALM) == "ok"
    assert rotated.check(rotated.make(NOW, realm=REALM), NOW, realm=REALM) == "ok"
    assert rotated.make(NOW, realm=REALM) != nonce


@pytest.mark.parametrize("kwargs", [
    {"secret": b"short"}, {"secret": "text-not-bytes-0123456789"}, {"secret": SECRET, "ttl": 0},
    {"secret": SECRET, "retired": [b"tiny"]},
])
def test_nonce_manager_rejects_bad_configuration(kwargs):
    with pytest.raises(ValueError):
        NonceManager(**kwargs)


@given(st.text(max_size=64), st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e12))
def test_nonce_check_never_raises(nonce, now):
    assert NonceManager(SECRET).check(nonce, now, realm=REALM) in ("ok", "stale", "invalid")


# --- challenges ---------------------------------------------------------------


def test_challenge_md5_first_then_sha256_with_qop_auth(nonces):
    nonce = nonces.make(NOW, realm=REALM)
    fields = challenge(REALM, nonce)
    assert [f.get("algorithm") for f in fields] == [MD5, SHA256]
    for f in fields:
        assert f.is_digest
        assert (f.get("realm"), f.get("nonce"), f.get("qop")) == (REALM, nonce, "auth")
        assert f.get("stale") is None and f.get("opaque") is None
        assert parse_auth(str(f)) == f  # survives the header text


def test_challenge_stale_and_opaque(nonces):
    (f,) = challenge(REALM, "n", stale=True, opaque="xyz", algorithms=["md5"])
    assert (f.get("stale"), f.get("opaque"), f.get("algorithm")) == ("true", "xyz", MD5)
    with pytest.raises(ValueError):
        challenge(REALM, "n", algorithms=["SHA-1"])


# --- SIP round trips ----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip_every_algorithm_through_header_text(nonces, algorithm):
    cred = parse_auth(str(answer(nonces, algorithm=algorithm)))
    result = check(cred, nonces, now=NOW + 30)
    assert result.ok, result.reason
    assert (result.username, result.stale, result.reason, result.algorithm) == ("alice", False, "", algorithm)


def test_default_algorithm_is_md5(nonces):
    nonce = nonces.make(NOW, realm=REALM)
    offer = make_auth("Digest", realm=REALM, nonce=nonce, qop="auth")
    cred = credential(offer, username="alice", password="wonderland", method="INVITE",
                      uri="sip:bob@example.com", cnonce="abc")
    asked = []
    result = check(cred, nonces, method="INVITE",
                   ha1=lambda u, r, a: asked.append(a) or lookup(u, r, a))
    assert result.ok and result.algorithm == MD5 and asked == [MD5]


def test_sess_asks_lookup_for_base_algorithm(nonces):
    asked = []
    result = check(answer(nonces, algorithm=SHA256_SESS), nonces,
                   ha1=lambda u, r, a: asked.append(a) or lookup(u, r, a))
    assert result.ok and asked == [SHA256]


def test_stale_nonce_with_right_password_asks_for_rechallenge(nonces):
    result = check(answer(nonces), nonces, now=NOW + 301)
    assert not result.ok and result.stale and result.username == "alice"
    assert "expired" in result.reason


def test_stale_nonce_with_wrong_password_is_not_stale(nonces):
    result = check(answer(nonces, password="guess"), nonces, now=NOW + 301)
    assert not result.ok and not result.stale


def test_tampered_nonce_in_credential_fails(nonces):
    cred = answer(nonces)
    nonce = cred.get("nonce")
    forged = nonce[:-1] + ("A" if nonce[-1] != "A" else "B")
    tampered = AuthField(cred.scheme, tuple((k, forged if k == "nonce" else v) for k, v in cred.params))
    result = check(tampered, nonces)
    assert not result.ok and not result.stale and "not issued" in result.reason


def test_forged_nonce_with_right_password_is_only_stale(nonces):
    # The response proves the password, but the nonce was never issued:
    # never ok, re-challenge with stale=true (RFC 7616 §3.3).
    forged = "A" * 28
    result = check(answer(nonces, nonce=forged), nonces)
    assert not result.ok and result.stale


def test_nonce_of_another_realm_is_not_accepted(nonces):
    other = nonces.make(NOW, realm="other.example.com")
    result = check(answer(nonces, nonce=other), nonces)
    assert not result.ok and "not issued" in result.reason


def test_wrong_realm(nonces):
    cred = answer(nonces, realm="other.example.com")
    result = check(cred, nonces)
    assert not result.ok and not result.stale and "realm" in result.reason


def test_wrong_password(nonces):
    result = check(answer(nonces, password="guess"), nonces)
    assert not result.ok and not result.stale and "wrong response" in result.reason
    assert result.username == "alice"


def test_unknown_user(nonces):
    result = check(answer(nonces, username="mallory"), nonces)
    assert not result.ok and result.reason == "unknown user" and result.username == "mallory"


def test_method_is_covered(nonces):
    result = check(answer(nonces, method="REGISTER"), nonces, method="INVITE")
    assert not result.ok


def _without(cred: AuthField, *names: str) -> AuthField:
    return AuthField(cred.scheme, tuple((k, v) for k, v in cred.params if k not in names))


def _with(cred: AuthField, **params: str) -> AuthField:
    kept = tuple((k, v) for k, v in cred.params if k not in params)
    return AuthField(cred.scheme, kept + tuple(params.items()))


@pytest.mark.parametrize("missing, reason", [
    ("nc", "without nc"), ("cnonce", "without cnonce"), ("username", "no username"),
    ("uri", "no uri"), ("nonce", "no nonce"), ("response", "no usable response"),
])
def test_missing_parameters_are_refused(nonces, missing, reason):
    result = check(_without(answer(nonces), missing), nonces)
    assert not result.ok and reason in result.reason


def test_auth_int_is_refused_with_reason(nonces):
    result = check(_with(answer(nonces), qop="auth-int"), nonces)
    assert not result.ok and "auth-int" in result.reason
    offer = make_auth("Digest", realm=REALM, nonce="n", qop="auth-int")
    with pytest.raises(ValueError, match="auth-int"):
        credential(offer, username="a", password="b", method="INVITE", uri="sip:x", cnonce="c")


def test_unknown_algorithm_and_scheme_and_userhash(nonces):
    assert "unsupported algorithm" in check(_with(answer(nonces), algorithm="SHA-1"), nonces).reason
    assert "not Digest" in check(make_auth("Basic", realm=REALM), nonces).reason
    assert "userhash" in check(_with(answer(nonces), userhash="true"), nonces).reason


def test_rfc2069_credentials_accepted_unless_disabled(nonces):
    nonce = nonces.make(NOW, realm=REALM)
    offer = make_auth("Digest", realm=REALM, nonce=nonce)  # an old-style challenge
    cred = credential(offer, username="bob", password="builder", method="INVITE",
                      uri="sip:alice@example.com", cnonce="unused")
    assert cred.get("qop") is None and cred.get("cnonce") is None
    assert check(cred, nonces, method="INVITE").ok
    refused = check(cred, nonces, method="INVITE", allow_rfc2069=False)
    assert not refused.ok and "RFC 2069" in refused.reason
    sess = check(_with(cred, algorithm=MD5_SESS), nonces, method="INVITE")
    assert not sess.ok and "needs qop" in sess.reason


def test_uri_not_compared_with_request_uri_and_hex_case_ignored(nonces):
    cred = answer(nonces)
    assert cred.get("uri") == "sip:example.com"
    # The caller does not even pass a Request-URI: any uri the UA hashed is fine.
    assert check(_with(cred, response=cred.get("response").upper()), nonces).ok


def test_non_ascii_response_is_refused_without_error(nonces):
    result = check(_with(answer(nonces), response="é" * 64), nonces)
    assert not result.ok
    result = check(_with(answer(nonces), uri="sip:\ud800@example.com"), nonces)
    assert not result.ok and "cannot be hashed" in result.reason
    # Undecodable bytes (surrogate-escaped by the parser) hash as those bytes.
    cred = answer(nonces, username="bob", password="builder")
    assert check(_with(cred, uri="sip:\udce9@example.com"), nonces).reason.startswith("wrong response")


_PARAM_NAMES = ("username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc",
                "cnonce", "userhash", "opaque")


@given(st.lists(st.tuples(st.sampled_from(_PARAM_NAMES), st.text(max_size=40)), max_size=12),
       st.sampled_from(["Digest", "digest", "Basic"]))
def test_verify_never_raises_on_arbitrary_credentials(params, scheme):
    nonces = NonceManager(SECRET)
    if params and params[0][0] == "realm":
        params[0] = ("realm", REALM)
    result = check(AuthField(scheme, tuple(params)), nonces)
    assert not result.ok and result.reason


def test_find_credential_picks_our_realm(nonces):
    ours = answer(nonces)
    theirs = _with(ours, realm="proxy.example.net")
    assert find_credential([theirs, make_auth("Basic", realm=REALM), ours], REALM) is ours
    assert find_credential([theirs], REALM) is None


def test_credential_rejects_unusable_challenges():
    with pytest.raises(ValueError):
        credential(make_auth("Basic", realm=REALM), username="a", password="b", method="M",
                   uri="sip:x", cnonce="c")
    with pytest.raises(ValueError):
        credential(make_auth("Digest", realm=REALM), username="a", password="b", method="M",
                   uri="sip:x", cnonce="c")
    with pytest.raises(ValueError):
        credential(make_auth("Digest", realm=REALM, nonce="n", algorithm=MD5_SESS),
                   username="a", password="b", method="M", uri="sip:x", cnonce="c")


def test_verify_speed_report(nonces, record_property):
    """Timing is reported, not asserted (machines differ)."""
    creds = [parse_auth(str(answer(nonces, algorithm=a))) for a in (SHA256, MD5)]
    rounds = 2000
    start = time.perf_counter()
    results = [check(creds[i & 1], nonces) for i in range(rounds)]
    per_call = (time.perf_counter() - start) / rounds * 1e6
    record_property("verify_us", round(per_call, 2))
    print(f"digest.verify: {per_call:.1f} us per call")
    assert all(r.ok for r in results)
