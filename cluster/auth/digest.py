"""Digest authentication for SIP, sans-IO (RFC 3261 §22, RFC 8760, RFC 7616, RFC 2617).

A UAS (registrar or proxy) challenges with ``challenge()`` and checks the
answer with ``verify()``; a UAC (e.g. registering upstream to a trunk)
answers a challenge with ``credential()``. Nothing here reads a clock or does
I/O: ``now`` is a parameter and credentials come from a caller-supplied
``ha1(username, realm, algorithm)`` lookup (``cluster.auth.users.UserCache.ha1``
in a worker).

Algorithms: SHA-256 and MD5 (RFC 8760 §2.1) and their ``-sess`` variants
(RFC 7616 §3.4.2). The lookup is always asked for the *base* algorithm's HA1
(``"MD5"`` or ``"SHA-256"``); session HA1 is derived here. SHA-512-256 is not
offered: few SIP stacks implement it and records would need a third hash.

Quality of protection: ``qop=auth`` only. ``auth-int`` is refused with a
reason (it protects the body but no header, and TLS does the job better).
Credentials without ``qop`` (RFC 2069 style) are accepted by default because
RFC 3261 §22.4 keeps qop optional "for clients and servers to receive"; pass
``allow_rfc2069=False`` to refuse them. In this stateless design they are no
weaker against replay than ``qop=auth`` (see below), only against
chosen-plaintext attacks, which is why they can be switched off.

Nonces are stateless so that any shard can validate a nonce another shard
issued (DESIGN §8): ``base64url(timestamp ‖ HMAC-SHA256(secret, timestamp ‖
realm)[:16])``. The realm is under the MAC, so a nonce issued for one realm is
invalid in another. Nothing is remembered about issued nonces, hence:

* **Replay of a captured request within the nonce lifetime is not detected.**
  Tracking ``nc`` per nonce needs shared state; it is out of scope. The
  mitigation is a short TTL (default 300 s, about one registration refresh).
* Two challenges issued in the same second for the same realm carry the same
  nonce; the client's cnonce still makes every ``qop=auth`` response unique.

The ``uri`` parameter must be present but is not compared with the
Request-URI: RFC 3261 §22.4 asks for a match, but UAs differ (a REGISTER
answered with the AOR, a proxy that rewrote the Request-URI, escapes written
differently) and the URI is covered by the response hash anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from cluster.sip.auth import AuthField

__all__ = [
    "ALGORITHMS", "DigestResult", "MD5", "MD5_SESS", "NonceCheck", "NonceChecker",
    "NonceManager", "OutstandingChallenges", "Unanswered", "SHA256", "SHA256_SESS", "challenge", "credential", "find_credential",
    "ha1", "request_digest", "verify",
]

MD5 = "MD5"
MD5_SESS = "MD5-sess"
SHA256 = "SHA-256"
SHA256_SESS = "SHA-256-sess"

NonceCheck = Literal["ok", "stale", "invalid"]

# Surrogate escapes let text decoded from arbitrary bytes hash as those bytes.
_ENC = "utf-8"
_ERRORS = "surrogateescape"


def _md5(data: bytes) -> str:
    # usedforsecurity=False: MD5 is what RFC 3261 peers speak, and a FIPS
    # build would otherwise refuse it.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class _Algorithm:
    name: str  # as written in challenges (RFC 8760 §2.1 / RFC 7616 §3.4.2 spelling)
    base: str  # the stored HA1 this one derives from
    hash: Callable[[bytes], str]
    session: bool


_ALGORITHM_TABLE = {
    a.name.lower(): a
    for a in (
        _Algorithm(SHA256, SHA256, _sha256, False),
        _Algorithm(SHA256_SESS, SHA256, _sha256, True),
        _Algorithm(MD5, MD5, _md5, False),
        _Algorithm(MD5_SESS, MD5, _md5, True),
    )
}
#: Algorithm names this module understands, strongest first.
ALGORITHMS = tuple(a.name for a in _ALGORITHM_TABLE.values())
# RFC 7616 §3.4: "If this is not present, it is assumed to be 'MD5'."
_DEFAULT_ALGORITHM = _ALGORITHM_TABLE["md5"]


def _algorithm(name: str) -> _Algorithm:
    found = _ALGORITHM_TABLE.get(name.lower())
    if found is None:
        raise ValueError(f"unsupported digest algorithm {name!r}; expected one of {ALGORITHMS}")
    return found


# --- the digest computation (RFC 7616 §3.4.1–§3.4.3) --------------------------


def ha1(username: str, realm: str, password: str, algorithm: str = MD5) -> str:
    """The stored secret ``H(username:realm:password)`` (RFC 7616 §3.4.2).

    A ``-sess`` name gives its base algorithm's HA1: session keys depend on
    nonce and cnonce and are never stored.
    """
    alg = _algorithm(algorithm)
    return alg.hash(f"{username}:{realm}:{password}".encode(_ENC, _ERRORS))


def _response(alg: _Algorithm, secret: str, nonce: str, method: str, uri: str,
              qop: str | None, nc: str | None, cnonce: str | None) -> str:
    h = alg.hash
    if alg.session:
        # RFC 7616 §3.4.2: HA1 = H(H(user:realm:pass):nonce:cnonce)
        secret = h(f"{secret}:{nonce}:{cnonce}".encode(_ENC, _ERRORS))
    ha2 = h(f"{method}:{uri}".encode(_ENC, _ERRORS))  # RFC 7616 §3.4.3, qop=auth
    if qop is None:
        # RFC 2069 (RFC 2617 §3.2.2.1 compatibility form): KD(HA1, nonce:HA2)
        return h(f"{secret}:{nonce}:{ha2}".encode(_ENC, _ERRORS))
    return h(f"{secret}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode(_ENC, _ERRORS))


def request_digest(algorithm: str, ha1: str, *, nonce: str, method: str, uri: str,
                   qop: str | None = None, nc: str | None = None,
                   cnonce: str | None = None) -> str:
    """The ``response`` value (lowercase hex) for a stored (non-session) HA1.

    ``qop=None`` computes the RFC 2069 form; ``qop="auth"`` needs ``nc`` and
    ``cnonce``, as does any ``-sess`` algorithm.
    """
    alg = _algorithm(algorithm)
    if qop is not None and qop.lower() != "auth":
        raise ValueError(f"qop {qop!r} not supported (only 'auth')")
    if qop is not None and not nc:
        raise ValueError("qop=auth needs nc")
    if (qop is not None or alg.session) and not cnonce:
        raise ValueError("qop=auth and -sess algorithms need cnonce")
    return _response(alg, ha1.lower(), nonce, method, uri, qop, nc, cnonce)


# --- stateless nonces ---------------------------------------------------------

_STAMP_BYTES = 5   # seconds since the epoch, big-endian: good until year 36812
_TAG_BYTES = 16    # truncated HMAC-SHA256; 128 bits is beyond guessing
_NONCE_CHARS = 4 * (_STAMP_BYTES + _TAG_BYTES) // 3  # 21 bytes -> 28 chars, no padding
_NONCE_RE = re.compile(f"[A-Za-z0-9_-]{{{_NONCE_CHARS}}}")
_MIN_SECRET = 16


class NonceManager:
    """Issues and checks stateless nonces bound to a realm and a time.

    Every node of a cluster builds one from the same ``secret`` (≥ 16 bytes),
    so a nonce issued by one shard validates on every other. ``retired``
    secrets are still accepted by ``check`` (never used by ``make``), which
    lets operators rotate the secret without failing logins in flight: add the
    new secret, keep the old one retired for at least ``ttl``, then drop it.

    ``check`` answers "stale" for a genuine nonce older than ``ttl`` seconds
    and "invalid" for anything not issued with these secrets for this realm,
    malformed text, or a timestamp more than ``skew`` seconds in the future
    (clocks of the nodes differ a little; more than that is forgery or a
    broken clock). Replay within ``ttl`` is not detected (module docstring).
    """

    __slots__ = ("_macs", "ttl", "skew")

    def __init__(self, secret: bytes, ttl: float = 300.0, *, skew: float = 5.0,
                 retired: Iterable[bytes] = ()) -> None:
        keys = [secret, *retired]
        for key in keys:
            if not isinstance(key, (bytes, bytearray)) or len(key) < _MIN_SECRET:
                raise ValueError(f"nonce secrets must be bytes of at least {_MIN_SECRET} bytes")
        if not ttl > 0 or not skew >= 0:
            raise ValueError("ttl must be positive and skew non-negative")
        self.ttl = float(ttl)
        self.skew = float(skew)
        # A keyed HMAC object per secret, copied per use: skips re-deriving
        # the padded keys, half the cost of a fresh hmac.new().
        self._macs = tuple(hmac.new(bytes(key), digestmod=hashlib.sha256) for key in keys)

    def make(self, now: float, *, realm: str) -> str:
        """A nonce for ``realm`` issued at ``now`` (Unix seconds)."""
        stamp_value = int(now)
        if not 0 <= stamp_value < 1 << (8 * _STAMP_BYTES):
            raise ValueError(f"time {now!r} out of range for a nonce")
        stamp = stamp_value.to_bytes(_STAMP_BYTES, "big")
        mac = self._macs[0].copy()
        mac.update(stamp)
        mac.update(realm.encode(_ENC, _ERRORS))
        return base64.urlsafe_b64encode(stamp + mac.digest()[:_TAG_BYTES]).decode("ascii")

    def check(self, nonce: str, now: float, *, realm: str) -> NonceCheck:
        """``"ok"``, ``"stale"`` (genuine but expired) or ``"invalid"``."""
        # The regex pins the alphabet too: b64decode would otherwise accept
        # '+' and '/' as aliases, and skip other characters.
        if len(nonce) != _NONCE_CHARS or _NONCE_RE.fullmatch(nonce) is None:
            return "invalid"
        raw = base64.urlsafe_b64decode(nonce)
        stamp = raw[:_STAMP_BYTES]
        tag = raw[_STAMP_BYTES:]
        realm_bytes = realm.encode(_ENC, _ERRORS)
        for keyed in self._macs:
            mac = keyed.copy()
            mac.update(stamp)
            mac.update(realm_bytes)
            if hmac.compare_digest(mac.digest()[:_TAG_BYTES], tag):
                break
        else:
            return "invalid"
        age = now - int.from_bytes(stamp, "big")
        if age < -self.skew:
            return "invalid"
        if age > self.ttl:
            return "stale"
        return "ok"


class NonceChecker(Protocol):
    def check(self, nonce: str, now: float, *, realm: str) -> NonceCheck: ...


# --- UAS side -----------------------------------------------------------------


def challenge(realm: str, nonce: str, *, stale: bool = False,
              algorithms: Iterable[str] = (MD5, SHA256),
              opaque: str | None = None) -> list[AuthField]:
    """One Digest challenge per algorithm, in the order given.

    RFC 8760 §2.4 has a UAS list its challenges most preferred first and a
    UAC use the first one whose algorithm it supports. In practice many UACs
    (SIPp 3.6, baresip 1.0, sipsak) take the first challenge whatever its
    algorithm and know only MD5, so MD5 comes first by default and SHA-256
    is offered too; a domain that must not accept MD5 offers SHA-256 alone
    (``worker.digest_sha256_domains``). Each goes into its own WWW-Authenticate (401) or
    Proxy-Authenticate (407) header. ``stale=True`` tells the UAC its
    password was right and only the nonce expired (RFC 7616 §3.3).
    """
    fields = []
    for name in algorithms:
        params = [("realm", realm), ("nonce", nonce)]
        if opaque is not None:
            params.append(("opaque", opaque))
        if stale:
            params.append(("stale", "true"))
        params.append(("algorithm", _algorithm(name).name))
        # RFC 3261 §22.4: servers MUST always send qop.
        params.append(("qop", "auth"))
        fields.append(AuthField("Digest", tuple(params)))
    return fields


@dataclass(frozen=True, slots=True)
class DigestResult:
    """Outcome of ``verify``.

    ``ok`` means authenticated as ``username``. ``stale`` means the response
    was right for its nonce but the nonce is no longer acceptable: answer
    with a fresh challenge carrying ``stale=true`` so the UAC retries without
    asking its user (RFC 7616 §3.3). ``reason`` is a short text for logs or a
    Warning header, empty on success. ``username`` is the claimed name
    whenever the credential had one, for logging failures too.
    """

    ok: bool
    username: str | None
    stale: bool = False
    reason: str = ""
    algorithm: str | None = None


def _refuse(reason: str, username: str | None = None, algorithm: str | None = None) -> DigestResult:
    return DigestResult(False, username, False, reason, algorithm)


def verify(credential: AuthField, *, method: str, realm: str, now: float,
           nonces: NonceChecker, ha1: Callable[[str, str, str], str | None],
           allow_rfc2069: bool = True) -> DigestResult:
    """Check one Authorization / Proxy-Authorization credential (RFC 3261 §22.4).

    ``ha1(username, realm, algorithm)`` returns the stored HA1 (lowercase
    hex) for the base algorithm ``"MD5"`` or ``"SHA-256"``, or None for an
    unknown user. ``method`` is the request's method (HA2, RFC 3261 §22.4).

    A correct response to a nonce that is expired *or* not ours (issued
    under a secret since rotated away, or by a restarted single node with a
    fresh secret) yields ``stale=True``: RFC 7616 §3.3 sets stale "if the
    nonce is invalid but with a valid digest for that nonce", since the
    digest proves the client knows the password. It never yields ``ok``.
    """
    if not credential.is_digest:
        return _refuse(f"scheme {credential.scheme!r} is not Digest")
    p = dict(credential.params)
    username = p.get("username")
    if username is None:
        return _refuse("credential has no username")
    algorithm = p.get("algorithm")
    alg = _DEFAULT_ALGORITHM if algorithm is None else _ALGORITHM_TABLE.get(algorithm.lower())
    if alg is None:
        return _refuse(f"unsupported algorithm {algorithm!r}", username)
    name = alg.name
    if p.get("userhash", "").lower() == "true":
        # RFC 7616 §3.4.4; never offered in our challenges.
        return _refuse("userhash is not supported", username, name)
    their_realm = p.get("realm")
    if their_realm != realm:
        return _refuse(f"realm {their_realm!r} is not {realm!r}", username, name)
    nonce = p.get("nonce")
    if not nonce:
        return _refuse("credential has no nonce", username, name)
    uri = p.get("uri")
    if uri is None:
        return _refuse("credential has no uri", username, name)
    response = p.get("response")
    if not response or not response.isascii():
        return _refuse("credential has no usable response", username, name)
    qop = p.get("qop")
    nc = cnonce = None
    if qop is None:
        if not allow_rfc2069:
            return _refuse("credential has no qop (RFC 2069 style refused)", username, name)
        if alg.session:
            return _refuse(f"{name} needs qop and cnonce", username, name)
    else:
        lowered = qop.lower()
        if lowered != "auth":
            if lowered == "auth-int":
                return _refuse("qop=auth-int is not supported (only auth)", username, name)
            return _refuse(f"unknown qop {qop!r}", username, name)
        nc = p.get("nc")
        cnonce = p.get("cnonce")
        # nc is hashed but not tracked (no replay state), so only presence matters.
        if not nc:
            return _refuse("qop=auth without nc", username, name)
        if not cnonce:
            return _refuse("qop=auth without cnonce", username, name)

    state = nonces.check(nonce, now, realm=realm)
    secret = ha1(username, realm, alg.base)
    if secret is None:
        return _refuse("unknown user", username, name)
    try:
        expected = _response(alg, secret, nonce, method, uri, qop, nc, cnonce)
    except UnicodeEncodeError:
        # Lone surrogates that did not come from undecodable bytes.
        return _refuse("credential text cannot be hashed", username, name)
    if not hmac.compare_digest(expected, response.lower()):
        if state == "invalid":
            return _refuse("wrong response to a nonce not issued here", username, name)
        return _refuse("wrong response (bad password?)", username, name)
    if state == "ok":
        return DigestResult(True, username, False, "", name)
    reason = "nonce expired" if state == "stale" else "nonce not issued here (secret rotated?)"
    return DigestResult(False, username, True, reason, name)


def find_credential(fields: Iterable[AuthField], realm: str) -> AuthField | None:
    """The first Digest credential for ``realm``, e.g. from ``msg.authorizations``.

    RFC 3261 §22.3: a request may carry credentials for several realms
    (one per proxy on the path); each element picks its own.
    """
    for field in fields:
        if field.is_digest and field.get("realm") == realm:
            return field
    return None


@dataclass(frozen=True, slots=True)
class Unanswered:
    """A challenge nobody answered within the table's timeout."""

    call_id: str
    source: str
    realm: str
    algorithms: tuple[str, ...]
    issued: float


class OutstandingChallenges:
    """Challenges sent and not yet answered, by Call-ID, to say in a log why
    a client gives up (a UAC that knows none of the offered algorithms, or
    has no password for the realm, just stops). A UAC retries a challenged
    request with the same Call-ID (RFC 3261 §22.2), which the ring brings to
    the same shard, so a per-worker table sees the answer. Bounded: past
    ``limit`` entries the oldest is forgotten (and counted in ``dropped``),
    so a flood of unanswered requests costs a fixed amount of memory."""

    __slots__ = ("timeout", "limit", "dropped", "_pending")

    def __init__(self, timeout: float = 32.0, limit: int = 10_000) -> None:
        if not timeout > 0 or limit < 1:
            raise ValueError("timeout must be positive and limit at least 1")
        self.timeout = float(timeout)
        self.limit = limit
        self.dropped = 0
        self._pending: OrderedDict[str, Unanswered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def issued(self, call_id: str, source: str, realm: str, algorithms: tuple[str, ...],
               now: float) -> None:
        pending = self._pending
        if call_id in pending:
            # A new challenge for the same call (stale nonce, next request):
            # the clock starts again.
            del pending[call_id]
        elif len(pending) >= self.limit:
            pending.popitem(last=False)
            self.dropped += 1
        pending[call_id] = Unanswered(call_id, source, realm, tuple(algorithms), now)

    def answered(self, call_id: str) -> Unanswered | None:
        return self._pending.pop(call_id, None)

    def expire(self, now: float) -> list[Unanswered]:
        """The entries older than ``timeout``, removed (oldest first)."""
        out = []
        pending = self._pending
        while pending:
            entry = next(iter(pending.values()))
            if now - entry.issued < self.timeout:
                break
            pending.popitem(last=False)
            out.append(entry)
        return out


# --- UAC side -----------------------------------------------------------------


def credential(challenge: AuthField, *, username: str, password: str, method: str,
               uri: str, cnonce: str, nc: int = 1) -> AuthField:
    """Answer ``challenge`` (RFC 3261 §22.2, RFC 7616 §3.4).

    ``cnonce`` is supplied by the caller (no randomness here); ``nc`` counts
    requests made with the same nonce. Uses ``qop=auth`` when offered, the
    RFC 2069 form when the challenge has no qop, and raises ValueError for a
    challenge that is not Digest, lacks realm or nonce, names an unsupported
    algorithm or offers only ``auth-int``.
    """
    if not challenge.is_digest:
        raise ValueError(f"cannot answer a {challenge.scheme!r} challenge")
    realm = challenge.get("realm")
    nonce = challenge.get("nonce")
    if realm is None or not nonce:
        raise ValueError("Digest challenge without realm or nonce")
    algorithm = challenge.get("algorithm")
    alg = _DEFAULT_ALGORITHM if algorithm is None else _algorithm(algorithm)
    offered = challenge.get("qop")
    qop = nc_text = None
    if offered is not None:
        if "auth" not in (q.strip().lower() for q in offered.split(",")):
            raise ValueError(f"challenge offers qop {offered!r}; only auth is supported")
        qop = "auth"
        nc_text = f"{nc:08x}"
    elif alg.session:
        raise ValueError(f"{alg.name} challenge without qop")
    secret = ha1(username, realm, password, alg.base)
    response = _response(alg, secret, nonce, method, uri, qop,
                         nc_text, cnonce if (qop or alg.session) else None)
    params = [("username", username), ("realm", realm), ("nonce", nonce), ("uri", uri),
              ("response", response), ("algorithm", alg.name)]
    opaque = challenge.get("opaque")
    if opaque is not None:
        params.append(("opaque", opaque))  # RFC 7616 §3.4: returned unchanged
    if qop is not None and nc_text is not None:  # set together above
        params += [("qop", qop), ("nc", nc_text), ("cnonce", cnonce)]
    return AuthField("Digest", tuple(params))
