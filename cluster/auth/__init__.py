"""Authentication (DESIGN §8): SIP Digest with stateless nonces, and the
credential records behind it.

    >>> from cluster.auth import NonceManager, UserCache, challenge, verify
    >>> nonces = NonceManager(secret, ttl=300)
    >>> fields = challenge(realm, nonces.make(now, realm=realm))      # -> 401/407
    >>> result = verify(credential, method=request.method, realm=realm, now=now,
    ...                 nonces=nonces, ha1=cache.ha1)
    >>> result.ok, result.stale, result.username, result.reason

``digest`` is sans-IO. ``users`` holds the record format and the worker's
cache (pure) plus ``UserDirectory``, the only part that talks to etcd.
"""

from .digest import (
    ALGORITHMS, MD5, MD5_SESS, SHA256, SHA256_SESS, DigestResult, NonceCheck, NonceChecker,
    NonceManager, challenge, credential, find_credential, ha1, request_digest, verify,
)
from .users import (
    FORWARD_SETTINGS, BadUserRecord, UnknownUser, UserCache, UserDirectory, UserExists,
    UserRecord, canonical_user, make_user_record, parse_user_record, user_key, users_prefix,
    validate_settings,
)

__all__ = [
    "ALGORITHMS", "BadUserRecord", "DigestResult", "FORWARD_SETTINGS", "MD5", "MD5_SESS",
    "NonceCheck", "NonceChecker", "NonceManager", "SHA256", "SHA256_SESS", "UnknownUser",
    "UserCache", "UserDirectory", "UserExists", "UserRecord", "canonical_user", "challenge",
    "credential", "find_credential", "ha1", "make_user_record", "parse_user_record",
    "request_digest", "user_key", "users_prefix", "validate_settings", "verify",
]
