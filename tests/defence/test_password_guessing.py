"""Password guessing at the worker: the default application with the
worker's real Services and a PasswordGuard; failed digest attempts ban the
address and the user, a banned user is refused 403 whatever the password,
and a lifted ban lets the right password in again."""

from __future__ import annotations

import time
from collections import Counter

from cluster.app.api import Challenge, Reply
from cluster.defence import ADDRESS, USER, AuthFailures, Ban, BanTable
from nodes.worker.defence import PasswordGuard
from tests.worker.test_trust import OUTSIDE, _authorize, _challenge, _decide, _request, _services


class Publisher:
    def __init__(self) -> None:
        self.offered: list[Ban] = []

    def offer(self, ban: Ban) -> bool:
        self.offered.append(ban)
        return True


def _guarded(limit=3):
    stats = Counter()
    publisher = Publisher()
    guard = PasswordGuard(AuthFailures(limit=limit, window=60.0, ban_time=600.0), BanTable(100), "w1",
                          stats, publisher)
    return _services(events=stats, guard=guard), guard, publisher, stats


def _attempt(services, password, username="alice"):
    request = _request("INVITE", "sip:bob@example.com")
    response = _challenge(services, request)
    again = _request("INVITE", "sip:bob@example.com", call_id=request.call_id)
    _authorize(services, again, response, username, password)
    return _decide(services, again)[1]


def _accepted(decision) -> bool:
    # Identity proved: the call goes on to bob, who has no contact (480).
    return isinstance(decision, Reply) and decision.status == 480


def test_wrong_passwords_ban_the_address_and_the_user():
    services, guard, publisher, stats = _guarded(limit=3)
    for _ in range(2):
        assert isinstance(_attempt(services, "guess"), Challenge)
    assert publisher.offered == []
    assert isinstance(_attempt(services, "guess"), Challenge)
    assert {(b.kind, b.subject, b.reason) for b in publisher.offered} == {
        (ADDRESS, OUTSIDE, "auth"), (USER, "alice@example.com", "auth")}
    assert all(590 < b.until - time.time() <= 600 for b in publisher.offered)
    assert stats["ban_auth"] == 2 and stats["auth_failed"] == 3
    # The user is refused at once on this worker, even with the right password.
    decision = _attempt(services, "pw-alice")
    assert isinstance(decision, Reply) and decision.status == 403
    assert stats["auth_banned"] == 1
    # Lifted (bans del, or the lease ended): the right password works again.
    guard.lifted(USER, "alice@example.com")
    assert _accepted(_attempt(services, "pw-alice"))


def test_guesses_at_unknown_users_ban_the_address_only():
    services, _, publisher, _ = _guarded(limit=2)
    for name in ("nobody", "nobody"):
        _attempt(services, "guess", username=name)
    assert [(b.kind, b.subject) for b in publisher.offered] == [(ADDRESS, OUTSIDE)]


def test_a_ban_from_another_worker_refuses_the_user_here():
    services, guard, _, _ = _guarded()
    guard.put(Ban(USER, "alice@example.com", time.time() + 60, "auth", "w2"), time.time())
    decision = _attempt(services, "pw-alice")
    assert isinstance(decision, Reply) and decision.status == 403


def test_without_a_guard_nothing_is_banned():
    services = _services()
    for _ in range(20):
        assert isinstance(_attempt(services, "guess"), Challenge)
    assert _accepted(_attempt(services, "pw-alice"))


def test_a_trusted_source_is_never_banned_its_user_is():
    # An SBC in worker.trusted relays many users: one user's wrong password
    # bans that user, never the SBC's address.
    services, _, publisher, _ = _guarded(limit=2)
    for _ in range(3):
        request = _request("INVITE", "sip:bob@example.com")
        _, decision = _decide(services, request, host="127.0.0.1")
        assert isinstance(decision, Challenge)
        response = services.challenge(request, decision, "127.0.0.1")
        again = _request("INVITE", "sip:bob@example.com", call_id=request.call_id)
        _authorize(services, again, response, "alice", "guess")
        _decide(services, again, host="127.0.0.1")
    assert [(b.kind, b.subject) for b in publisher.offered] == [(USER, "alice@example.com")]
