"""A CANCEL with no response context is forwarded, not answered 481 (§16.10).

The failover case: shard A forwarded an INVITE and then failed; the ring
moved the call to shard B, which receives the caller's CANCEL without ever
having seen the INVITE. B must answer the CANCEL 200 and send it on to where
the INVITE went, with the branch A gave the INVITE, so that the callee
matches it to the INVITE (§9.2) and stops ringing.

Two real WorkerNode instances, fed envelopes as the edge would send them; no
sockets (their PUSH sockets are replaced by a list).
"""

from __future__ import annotations

import time

from cluster.app.api import Application
from cluster.config import load_config
from cluster.link import Envelope, pack, unpack
from cluster.sip import parse_message
from nodes.worker.node import WorkerNode
from nodes.worker.services import Services

EDGE = "edge-1"
EDGE_ADDR = ("127.0.0.1", 5060)
CALLER = ("127.0.0.1", 5061)
CALLEE = "127.0.0.1:5070"


class Sent:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, endpoint: str, data: bytes) -> bool:
        self.frames.append(data)
        return True

    def connect(self, endpoint: str) -> None:
        return None

    def messages(self):
        return [parse_message(unpack(frame).data) for frame in self.frames]


def _worker(name: str, application: Application | None = None) -> WorkerNode:
    services = Services(domains=["localhost"], trusted=["127.0.0.0/8"],
                        nonce_secret=b"test-nonce-secret-0123456", nonce_ttl=300,
                        locations=None, users=None)
    worker = WorkerNode(load_config(None, env={}, overrides={"cluster.node_id": name}), application,
                        services=services)
    worker.inbox.close()
    worker.links.outbox = Sent()
    worker.links.edges = {EDGE: "sink"}
    return worker


def _request(method: str, uri: str = f"sip:bob@{CALLEE}", branch: str = "z9hG4bK-caller-1",
             extra: str = "") -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra}"
        "From: <sip:alice@bench.invalid>;tag=a1\r\n"
        "To: <sip:bob@localhost>\r\n"
        "Call-ID: failover-cancel-1@127.0.0.1\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _feed(worker: WorkerNode, data: bytes) -> None:
    env = unpack(pack(Envelope("in", EDGE, "UDP", CALLER, EDGE_ADDR, data, None, time.time_ns(),
                               None, "127.0.0.1:5060", EDGE)))
    worker.receive(env, 1000.0)


def test_a_cancel_reaching_a_new_owner_follows_the_invite_with_its_branch():
    old, new = _worker("worker-a"), _worker("worker-b")
    _feed(old, _request("INVITE"))
    invite = next(m for m in old.links.outbox.messages() if getattr(m, "method", "") == "INVITE")
    _feed(new, _request("CANCEL"))
    sent = new.links.outbox.messages()
    answers = [m.status for m in sent if not hasattr(m, "method")]
    assert answers == [200], f"the CANCEL is answered 200, not 481: {answers}"
    cancels = [m for m in sent if getattr(m, "method", "") == "CANCEL"]
    assert len(cancels) == 1
    cancel = cancels[0]
    assert cancel.via.branch == invite.via.branch, "the callee matches CANCEL to INVITE by branch"
    assert (cancel.via.host, cancel.via.port) == (invite.via.host, invite.via.port)
    assert str(cancel.uri) == str(invite.uri)
    assert cancel.max_forwards == 69
    assert new.stats["cancel_without_context_forwarded"] == 1


def test_a_cancel_with_nowhere_to_go_is_still_answered_481():
    worker = _worker("worker-b")
    # A local user with no registration: routing answers, it does not proxy.
    _feed(worker, _request("CANCEL", uri="sip:nobody@localhost"))
    answers = [m.status for m in worker.links.outbox.messages() if not hasattr(m, "method")]
    assert answers == [481]
    assert worker.stats["cancel_without_context_forwarded"] == 0


def test_the_cancel_is_retransmitted_until_the_callee_answers():
    worker = _worker("worker-b")
    _feed(worker, _request("CANCEL"))
    before = len([m for m in worker.links.outbox.messages() if getattr(m, "method", "") == "CANCEL"])
    worker.on_timers(1000.0 + 0.6)  # Timer E (T1)
    after = len([m for m in worker.links.outbox.messages() if getattr(m, "method", "") == "CANCEL"])
    assert (before, after) == (1, 2)


FORK = ("sip:bob@127.0.0.1:5070", "sip:bob@127.0.0.1:5071", "sip:bob@127.0.0.1:5072")


def _forking() -> Application:
    app = Application("fork")

    @app.request("INVITE", "CANCEL")
    def ring_all(call):
        return call.proxy(FORK)

    return app


def _sent(worker: WorkerNode, method: str) -> dict[str, str]:
    """Request-URI → top Via branch of each ``method`` the worker sent."""
    return {str(m.uri): m.via.branch for m in worker.links.outbox.messages() if getattr(m, "method", "") == method}


def test_every_branch_of_a_forked_invite_gets_its_cancel():
    old, new = _worker("worker-a", _forking()), _worker("worker-b", _forking())
    _feed(old, _request("INVITE"))
    invites = _sent(old, "INVITE")
    assert sorted(invites) == sorted(FORK)
    assert len(set(invites.values())) == 3, "each branch has a branch parameter of its own"
    _feed(new, _request("CANCEL"))
    assert _sent(new, "CANCEL") == invites
    answers = [m.status for m in new.links.outbox.messages() if not hasattr(m, "method")]
    assert answers == [200], "one answer to the caller, however many branches"
    assert new.stats["cancel_without_context_forwarded"] == 3


def test_a_cancel_matches_an_invite_that_carried_credentials():
    # §9.1: the CANCEL has no Proxy-Authorization even when the INVITE did
    # (the INVITE sent again after a 407).
    credentials = ('Proxy-Authorization: Digest username="alice", realm="bench.invalid", nonce="n1", '
                   f'uri="sip:bob@{CALLEE}", response="00000000000000000000000000000000"\r\n')
    old, new = _worker("worker-a"), _worker("worker-b")
    _feed(old, _request("INVITE", extra=credentials))
    invites = _sent(old, "INVITE")
    assert len(invites) == 1
    _feed(new, _request("CANCEL"))
    assert _sent(new, "CANCEL") == invites
