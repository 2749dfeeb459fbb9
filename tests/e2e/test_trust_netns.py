"""No open relay, no caller-ID spoofing, digest defaults that interoperate
(issue 15 parts 1 and 5), tried as an attacker from outside the trusted
networks: a network namespace of our own with a veth pair in a private /30
(10.2xx.x.x, unique per pid) that exists only inside it. The cluster
(``sipcluster up``, default digest settings) listens on the host side of the
pair; clients send from inside the namespace. A "foreign" target is a
loopback listener on 127.0.0.2, so a regression sends nothing off the
machine either."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from cluster.sip import parse_uri
from tests.e2e.harness import Registrant, SipAgent, UpCluster, answer_challenge, wait_for

pytestmark = pytest.mark.e2e

PID = os.getpid()
NS = f"sctrust{PID}"
VETH = f"vt{PID}"
_A, _B, _C = 200 + PID % 50, (PID // 50) % 256, (PID // 12800) % 64 * 4
HOST_IP = f"10.{_A}.{_B}.{_C + 1}"
NS_IP = f"10.{_A}.{_B}.{_C + 2}"
DOMAIN = "trust.test"
NONCE_TTL = 4
METHODS = ("INVITE", "MESSAGE", "REFER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "UPDATE", "OPTIONS")
CLONE_NEWNET = 0x40000000
ETC = Path("/etc/netns") / NS


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _in_netns(fn):
    """Run ``fn`` on a thread that entered the namespace: sockets it makes
    live there (setns changes only the calling thread)."""
    out: dict = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{NS}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - re-raised below
            out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


class OutsideAgent(SipAgent):
    """A SipAgent in the namespace, talking to the cluster's veth address."""

    def send(self, message, port: int, host: str = HOST_IP) -> None:
        super().send(message, port, HOST_IP if host == "127.0.0.1" else host)


def outside() -> OutsideAgent:
    return _in_netns(lambda: OutsideAgent(NS_IP))


@pytest.fixture(scope="module")
def netns():
    _ip("netns", "add", NS)
    try:
        _ip("link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NS)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", VETH)
        _ip("link", "set", VETH, "up")
        _ip("-n", NS, "addr", "add", f"{NS_IP}/30", "dev", "eth0")
        _ip("-n", NS, "link", "set", "eth0", "up")
        _ip("-n", NS, "link", "set", "lo", "up")
        # `ip netns exec` shows this file as /etc/hosts inside the namespace:
        # sipsak resolves the SIP domain to the cluster.
        ETC.mkdir(parents=True, exist_ok=True)
        (ETC / "hosts").write_text(f"127.0.0.1 localhost\n{HOST_IP} {DOMAIN}\n")
        yield NS
    finally:
        pids = subprocess.run(["ip", "netns", "pids", NS], capture_output=True, text=True).stdout.split()
        for pid in pids:  # only what this module started in its own namespace
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
        subprocess.run(["ip", "link", "del", VETH], capture_output=True)
        shutil.rmtree(ETC, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(netns, etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("trust"), workers=2, etcd=etcd_server.endpoint,
                   host=HOST_IP, extra=["--domain", DOMAIN],
                   env={"SIPCLUSTER_WORKER_NONCE_TTL": str(NONCE_TTL)}).start()
    try:
        wait_for(lambda: len(up.worker_pids()) == 2, what="two workers in the ring")
        for user in ("alice", "bob", "carol", "dave", "erin"):
            up.user("add", f"{user}@{DOMAIN}", password=f"pw-{user}")
        yield up
    finally:
        up.stop()


@pytest.fixture
def foreign():
    agent = SipAgent("127.0.0.2")
    yield agent
    agent.close()


@pytest.fixture
def agent(cluster):
    a = outside()
    yield a
    a.close()


def _req(agent, method, uri, *, from_user="alice", from_domain=DOMAIN, to=None, to_tag=None,
         routes=(), call_id=None, headers=()):
    to = to or f"<{uri}>"
    if to_tag:
        to += f";tag={to_tag}"
    fields = [("Route", r) for r in routes] + [("Contact", agent.contact), *headers]
    if method == "SUBSCRIBE" or method == "NOTIFY":
        fields += [("Event", "presence")] + ([("Subscription-State", "active")] if method == "NOTIFY" else [])
    if method == "REFER":
        fields.append(("Refer-To", f"<sip:x@{DOMAIN}>"))
    return agent.request(method, uri, call_id=call_id or uuid.uuid4().hex, cseq=1,
                         from_=f"sip:{from_user}@{from_domain}", to=to, headers=fields)


def _events(cluster) -> dict:
    totals: dict = {}
    for member in cluster.status()["members"]:
        for key, value in ((member.get("status") or {}).get("stats") or {}).items():
            totals[key] = totals.get(key, 0) + value
    return totals


@pytest.mark.parametrize("method", METHODS)
def test_outsider_cannot_relay_spoof_or_forge(cluster, agent, foreign, method):
    port = cluster.port
    target = f"sip:x@127.0.0.2:{foreign.port}"
    # A forged To tag to a foreign target.
    response = agent.transact(_req(agent, method, target, from_user="eve", from_domain="evil.test",
                                   to_tag="forged"), port)
    assert response is not None and response.status == 403, response
    # A forged Route set: the cluster named twice, then the foreign hop.
    routes = [f"<sip:{HOST_IP}:{port};lr>", f"<sip:{HOST_IP}:{port};lr>",
              f"<sip:127.0.0.2:{foreign.port};lr>"]
    response = agent.transact(_req(agent, method, f"sip:carol@{DOMAIN}", from_user="eve",
                                   from_domain="evil.test", routes=routes), port)
    assert response is not None and response.status == 403 and response.reason == "Relaying Denied"
    # A forged cluster Route with a token of another dialog, and a To tag.
    response = agent.transact(_req(agent, method, target, to_tag="t", routes=[
        f"<sip:{HOST_IP}:{port};sct=AAAAAAAAAAAAAAAA;lr>"]), port)
    assert response is not None and response.status == 403
    # A forged RFC 5626 flow token in a cluster Route (an outsider steering
    # a request onto somebody's connection).
    response = agent.transact(_req(agent, method, target, to_tag="t", routes=[
        f"<sip:{HOST_IP}:{port};sfl=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA;lr>"]), port)
    assert response is not None and response.status == 403, response
    assert "forged flow token" in (response.get("warning") or ""), response
    # From a local user without credentials: challenged, MD5 offered first.
    request = _req(agent, method, f"sip:carol@{DOMAIN}")
    response = agent.transact(request, port)
    assert response is not None and response.status == 407
    assert [c.get("algorithm") for c in response.proxy_authenticates] == ["MD5", "SHA-256"]
    # With bob's credentials claiming alice: refused.
    again = answer_challenge(agent, request, response, username="bob", password="pw-bob")
    response = agent.transact(again, port)
    assert response is not None and response.status == 403 and response.reason == "Not Your Identity"
    # Nothing reached the foreign target.
    assert foreign.receive(lambda m: True, timeout=0.3) == (None, None)


def test_replayed_credentials_get_a_stale_challenge(cluster, agent):
    port = cluster.port
    captured = []
    for method in METHODS:
        request = _req(agent, method, f"sip:carol@{DOMAIN}")
        response = agent.transact(request, port)
        again = answer_challenge(agent, request, response, username="alice", password="pw-alice")
        response = agent.transact(again, port)
        # carol is a user without a registration: past the identity check.
        assert response is not None and response.status == 480, (method, response)
        captured.append(again)
    issued = time.time()
    wait_for(lambda: time.time() > issued + NONCE_TTL + 1.5, what="the nonces to expire")
    for request in captured:
        # The attacker resends the captured request as a new transaction.
        replay = request.copy()
        replay.set_top_via(replay.via.with_param("branch", f"z9hG4bK{uuid.uuid4().hex}"))
        response = agent.transact(replay, port)
        assert response is not None and response.status == 407, (request.method, response)
        assert all(c.get("stale") == "true" for c in response.proxy_authenticates)


def _register(cluster, user, agent):
    registrant = Registrant(cluster.port, user, f"pw-{user}", domain=DOMAIN, agent=agent)
    response = registrant.register([f"<{agent.contact}>"], expires=300)
    assert response is not None and response.status == 200, response


def _invite_until_delivered(cluster, caller, callee, headers=(), from_user="alice"):
    """INVITE dave (authenticating when challenged) until a worker's location
    cache has the registration; returns (invite as sent, as the callee got it)."""
    def attempt():
        invite = _req(caller, "INVITE", f"sip:dave@{DOMAIN}", from_user=from_user,
                      from_domain=DOMAIN if from_user != "eve" else "evil.test", headers=headers)
        response = caller.transact(invite, cluster.port, timeout=3)
        if response is not None and response.status == 407:
            invite = answer_challenge(caller, invite, response, username=from_user,
                                      password=f"pw-{from_user}")
            caller.send(invite, cluster.port)
        elif response is not None:
            return None  # 480: the cache does not have dave yet
        got, source = callee.receive(lambda m: getattr(m, "method", None) == "INVITE"
                                     and m.call_id == invite.call_id, timeout=5)
        return (invite, got, source) if got is not None else None
    return wait_for(attempt, timeout=60, interval=0.2, what="the INVITE to reach dave")


def _answer_200(callee, invite, source):
    callee.answer(invite, 200, source, headers=[("Contact", callee.contact)] +
                  [("Record-Route", rr) for rr in invite.get_all("record-route")])


def _in_dialog(agent, method, sent, ok, *, cseq, call_id=None):
    """A request from the caller within the dialog of ``ok`` (a 2xx)."""
    routes = list(reversed(ok.get_all("record-route")))
    contact = ok.get("contact").strip("<>")
    request = agent.request(method, contact, call_id=call_id or sent.call_id, cseq=cseq,
                            from_=str(sent.from_.uri), to=ok.get("to"), from_tag=sent.from_.tag,
                            headers=[("Route", r) for r in routes])
    return request


@pytest.mark.parametrize("privacy", [False, True])
def test_dialog_set_up_from_outside_works_through_the_token(cluster, privacy):
    caller, callee = outside(), outside()
    try:
        _register(cluster, "dave", callee)
        headers = [("P-Asserted-Identity", "<sip:ceo@trust.test>")]
        if privacy:
            headers.append(("Privacy", "id"))
        sent, got, source = _invite_until_delivered(cluster, caller, callee, headers)
        rr = got.get_all("record-route")
        assert rr and all(";sct=" in r for r in rr), rr
        # RFC 3325: the outsider's claim is gone; the authenticated identity
        # is asserted, unless privacy was asked for towards this untrusted hop.
        assert got.get_all("p-asserted-identity") == ([] if privacy else ["<sip:alice@trust.test>"])
        _answer_200(callee, got, source)
        ok, _ = caller.receive(lambda m: getattr(m, "status", 0) == 200
                               and m.call_id == sent.call_id, timeout=10)
        assert ok is not None
        caller.send(_in_dialog(caller, "ACK", sent, ok, cseq=sent.cseq.seq), cluster.port)
        ack, _ = callee.receive(lambda m: getattr(m, "method", None) == "ACK", timeout=10)
        assert ack is not None, "the ACK did not pass"
        # The callee (also outside) sends within the dialog: passes too.
        info = callee.request("INFO", sent.get("contact").strip("<>"), call_id=sent.call_id,
                              cseq=1, from_=f"sip:dave@{DOMAIN}", to=sent.get("from"),
                              headers=[("Route", r) for r in rr])
        threading.Thread(target=lambda: _answer_next(caller, "INFO"), daemon=True).start()
        response = callee.transact(info, cluster.port)
        assert response is not None and response.status == 200, response
        # A forged dialog: the same Route with another Call-ID.
        forged = _in_dialog(caller, "BYE", sent, ok, cseq=sent.cseq.seq + 1, call_id=uuid.uuid4().hex)
        response = caller.transact(forged, cluster.port)
        assert response is not None and response.status == 403
        # The real BYE reaches the callee.
        bye = _in_dialog(caller, "BYE", sent, ok, cseq=sent.cseq.seq + 2)
        threading.Thread(target=lambda: _answer_next(callee, "BYE"), daemon=True).start()
        response = caller.transact(bye, cluster.port)
        assert response is not None and response.status == 200, response
    finally:
        caller.close()
        callee.close()


def _answer_next(agent, method):
    request, source = agent.receive(lambda m: getattr(m, "method", None) == method, timeout=15)
    if request is not None:
        agent.answer(request, 200, source)


def test_unauthenticated_inbound_call_token_reaches_only_the_callee(cluster, foreign):
    # The callee on another host than the caller (here loopback): the token
    # of this dialog is bound to the callee's host.
    caller, callee = outside(), OutsideAgent("127.0.0.1")
    try:
        _register(cluster, "dave", callee)
        # eve@evil.test calls a local user: allowed without credentials.
        sent, got, source = _invite_until_delivered(cluster, caller, callee, from_user="eve")
        _answer_200(callee, got, source)
        ok, _ = caller.receive(lambda m: getattr(m, "status", 0) == 200 and m.call_id == sent.call_id,
                               timeout=10)
        assert ok is not None
        # Within that dialog, a re-INVITE retargeted to a foreign host: refused.
        relay = _in_dialog(caller, "INVITE", sent, ok, cseq=5)
        relay.uri = parse_uri(f"sip:x@127.0.0.2:{foreign.port}")
        response = caller.transact(relay, cluster.port)
        assert response is not None and response.status == 403, response
        assert foreign.receive(lambda m: True, timeout=0.3) == (None, None)
        # The BYE to the callee passes.
        threading.Thread(target=lambda: _answer_next(callee, "BYE"), daemon=True).start()
        response = caller.transact(_in_dialog(caller, "BYE", sent, ok, cseq=6), cluster.port)
        assert response is not None and response.status == 200, response
    finally:
        caller.close()
        callee.close()


def test_refusals_are_counted(cluster, agent):
    response = agent.transact(_req(agent, "MESSAGE", "sip:x@127.0.0.2:9", from_user="eve",
                                   from_domain="evil.test"), cluster.port)
    assert response is not None and response.status == 403
    wait_for(lambda: _events(cluster).get("relay_refused", 0) >= 1, what="relay_refused counted")


def test_sipsak_registers_from_outside_with_the_default_digest(cluster):
    # sipsak takes the first challenge and knows only MD5: it registers now
    # that MD5 is offered first.
    before = _events(cluster).get("register_200", 0)
    result = subprocess.run(
        ["ip", "netns", "exec", NS, "sipsak", "-U", "-C", f"sip:erin@{NS_IP}:5099", "-x", "60",
         "-s", f"sip:erin@{DOMAIN}", "-p", f"{HOST_IP}:{cluster.port}", "-a", "pw-erin", "-u", "erin", "-H", NS_IP, "-i", "-vv"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "All usrloc tests completed successful" in result.stdout, result.stdout[-2000:]
    wait_for(lambda: _events(cluster).get("register_200", 0) > before, what="the registration counted")
