"""Registrations through the cluster (issue 5 item 8, RFC 3261 §10.3).

One ``sipcluster up`` (two workers, real etcd) serves the module, with MD5
challenges (SIPp 3.6 knows no other) and ``registrar_min_expires`` lowered
to 3 s so expiry can be watched. SIPp shows the 401/200 exchange a real UA
makes; a small Python client (digest answers from
``cluster.auth.digest.credential``) checks each registrar rule precisely.
Whether a binding is usable is checked the way callers see it: an INVITE
to the AOR reaches the registered contact (which answers 486), or gets 480.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from cluster.registrar.cache import STALENESS_BOUND
from tests.e2e.harness import (
    Registrant, SipAgent, Sipp, UpCluster, free_port_pair, options, probe_call, wait_for,
)

pytestmark = pytest.mark.e2e

MIN_EXPIRES = 3
ENV = {"SIPCLUSTER_WORKER_DIGEST_ALGORITHMS": "MD5",
       "SIPCLUSTER_WORKER_REGISTRAR_MIN_EXPIRES": str(MIN_EXPIRES)}


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("registrations"), workers=2, etcd=etcd_server.endpoint,
                   env=ENV).start()
    wait_for(lambda: len(up.worker_pids()) == 2, what="two workers in the ring")
    yield up
    up.stop()


def add_user(cluster: UpCluster, name: str) -> tuple[str, str]:
    password = f"pw-{name}-{uuid.uuid4().hex[:6]}"
    cluster.user("add", f"{name}@localhost", password=password)
    return name, password


def contacts_of(response) -> dict[str, int]:
    return {str(c.uri): c.expires for c in response.contacts}


def call_status(cluster: UpCluster, user: str, callee: SipAgent | None, *,
                call_id: str | None = None) -> tuple[int, bool]:
    """INVITE ``user`` from a foreign domain: the caller's final status and
    whether ``callee`` (answering 486) was reached."""
    status, reached = probe_call(cluster.port, user, callee, call_id=call_id)
    return status, bool(reached)


def bindings(ua: Registrant) -> dict[str, int]:
    """The AOR's current bindings, from the registrar (a REGISTER without
    Contact is a query, §10.3 step 8): contact URI -> seconds left."""
    response = ua.register([])
    assert response is not None and response.status == 200, response
    return contacts_of(response)


def reachable(cluster: UpCluster, user: str, callee: SipAgent) -> None:
    """Wait until calls reach ``callee``: lookups come from each worker's
    watch-fed cache, a few milliseconds behind etcd (``STALENESS_BOUND``,
    asserted in tests/registrar/test_cache.py); the deadline here allows for
    a busy machine, not for the bound."""
    wait_for(lambda: call_status(cluster, user, callee) == (486, True), timeout=STALENESS_BOUND + 30,
             interval=0.05, what=f"{user} reachable")


def unreachable(cluster: UpCluster, user: str, callee: SipAgent) -> None:
    wait_for(lambda: call_status(cluster, user, callee) == (480, False), timeout=STALENESS_BOUND + 30,
             interval=0.05, what=f"{user} gone")


@pytest.fixture
def registrants(cluster):
    made: list[Registrant] = []

    def make(name: str) -> Registrant:
        user, password = add_user(cluster, name)
        r = Registrant(cluster.port, user, password)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_sipp_register_gets_401_then_200(cluster, tmp_path, registrants):
    ua = registrants("sam")
    contact_port = free_port_pair()
    sipp = Sipp("register.xml", tmp_path, name="register", remote=f"127.0.0.1:{cluster.port}",
                keys={"user": "sam", "domain": "localhost", "expires": 600,
                      "contact_host": "127.0.0.1", "contact_port": contact_port},
                args=["-au", "sam", "-ap", ua.password], timeout=20)
    assert sipp.run() == 0, sipp.report() + cluster.logs()
    statuses = [line.split()[1] for line in sipp.messages().splitlines()
                if line.startswith("SIP/2.0 ")]
    assert statuses == ["401", "200"], statuses
    assert "WWW-Authenticate: Digest" in sipp.messages()
    assert "algorithm=MD5" in sipp.messages()
    listed = bindings(ua)
    assert list(listed) == [f"sip:sam@127.0.0.1:{contact_port};transport=UDP"]
    assert 590 <= listed[f"sip:sam@127.0.0.1:{contact_port};transport=UDP"] <= 600


def test_wrong_password_is_never_accepted(cluster, tmp_path, registrants):
    ua = registrants("tina")
    # A real UA: SIPp answers the challenge with a wrong password and fails.
    sipp = Sipp("register.xml", tmp_path, name="register-wrong", remote=f"127.0.0.1:{cluster.port}",
                keys={"user": "tina", "domain": "localhost", "expires": 600,
                      "contact_host": "127.0.0.1", "contact_port": 9},
                args=["-au", "tina", "-ap", "not-the-password"], timeout=10)
    assert sipp.run() != 0
    assert "SIP/2.0 200" not in sipp.messages()
    # Precisely: every attempt with the wrong password is challenged again.
    for _ in range(3):
        response = ua.register([ua.agent.contact], expires=600, password="wrong")
        assert response.status == 401, response.to_bytes()
        assert response.www_authenticates
    assert bindings(ua) == {}


def test_interval_too_brief(cluster, registrants):
    ua = registrants("uma")
    response = ua.register([ua.agent.contact], expires=1)
    assert response.status == 423
    assert response.get("Min-Expires") == str(MIN_EXPIRES)
    assert bindings(ua) == {}


def test_binding_expires(cluster, registrants):
    ua = registrants("vera")
    response = ua.register([ua.agent.contact], expires=MIN_EXPIRES)
    assert response.status == 200
    assert contacts_of(response) == {ua.agent.contact: MIN_EXPIRES}
    # Registered: a call reaches the contact.
    reachable(cluster, "vera", ua.agent)
    # Once the interval is over nobody is there: 480 (the user exists).
    wait_for(lambda: call_status(cluster, "vera", ua.agent) == (480, False), timeout=20,
             interval=0.2, what="binding expired")
    assert bindings(ua) == {}


def test_unregister_with_expires_zero(cluster, registrants):
    ua = registrants("walt")
    assert ua.register([ua.agent.contact], expires=600).status == 200
    reachable(cluster, "walt", ua.agent)
    response = ua.register([ua.agent.contact], expires=0)
    assert response.status == 200
    assert contacts_of(response) == {}
    assert bindings(ua) == {}
    unreachable(cluster, "walt", ua.agent)


def test_star_with_expires_zero_removes_every_binding(cluster, registrants):
    ua = registrants("xena")
    port = ua.agent.port
    desk, mobile = f"sip:desk@127.0.0.1:{port}", f"sip:mobile@127.0.0.1:{port}"
    response = ua.register([desk, mobile], expires=600)
    assert set(contacts_of(response)) == {desk, mobile}
    # Both are called (parallel forking); the agent answers both forks.
    wait_for(lambda: sorted(probe_call(cluster.port, "xena", ua.agent)[1]) == [desk, mobile],
             timeout=STALENESS_BOUND + 30, interval=0.05, what="both contacts called")
    # §10.3 step 6: * is only valid with Expires: 0.
    assert ua.register(["*"], expires=600).status == 400
    assert len(bindings(ua)) == 2
    response = ua.register(["*"], expires=0)
    assert response.status == 200
    assert contacts_of(response) == {}
    unreachable(cluster, "xena", ua.agent)


def test_two_devices_both_listed_in_the_200(cluster, registrants):
    desk = registrants("yann")
    mobile = Registrant(cluster.port, "yann", desk.password)
    try:
        assert contacts_of(desk.register([desk.agent.contact], expires=600)) == {
            desk.agent.contact: 600}
        response = mobile.register([f"<{mobile.agent.contact}>;q=0.5"], expires=300)
        assert response.status == 200
        # §10.3 step 8: every current binding, each with its own expiry.
        listed = contacts_of(response)
        assert set(listed) == {desk.agent.contact, mobile.agent.contact}
        assert 590 <= listed[desk.agent.contact] <= 600
        assert listed[mobile.agent.contact] == 300
        q = {str(c.uri): c.q for c in response.contacts}
        assert q[mobile.agent.contact] == 0.5
    finally:
        mobile.close()


def test_same_instance_replaces_its_binding(cluster, registrants):
    first = registrants("zoe")
    instance = f'+sip.instance="<urn:uuid:{uuid.uuid4()}>";reg-id=1'
    response = first.register([f"<{first.agent.contact}>;{instance}"], expires=600,
                              headers=[("Supported", "outbound")])
    assert response.status == 200
    assert set(contacts_of(response)) == {first.agent.contact}
    # The same UA instance after a restart: new Call-ID, new address.
    rebooted = Registrant(cluster.port, "zoe", first.password)
    try:
        response = rebooted.register([f"<{rebooted.agent.contact}>;{instance}"], expires=600,
                                     headers=[("Supported", "outbound")])
        assert response.status == 200
        # RFC 5626 §6: the new flow replaces the old one instead of adding.
        assert set(contacts_of(response)) == {rebooted.agent.contact}
        assert response.get("Require") == "outbound"
        reachable(cluster, "zoe", rebooted.agent)
        # Only the new flow is called (a fork to the old one would go unanswered).
        assert probe_call(cluster.port, "zoe", rebooted.agent) == (486, [rebooted.agent.contact])
    finally:
        rebooted.close()


def _call_ids_per_worker(cluster: UpCluster, workers: set[str]) -> dict[str, str]:
    """One Call-ID owned by each worker (the cluster names the shard)."""
    found: dict[str, str] = {}
    while set(found) != workers:
        call_id = f"owned-{uuid.uuid4().hex}"
        status, headers = options(cluster.port, call_id)
        shard = headers.get("x-sipcluster-shard")
        if status == 200 and shard in workers:
            found.setdefault(shard, call_id)
    return found


def test_registrations_survive_worker_loss_and_restart_of_up(cluster, registrants):
    """Last in the module: it kills workers and restarts ``sipcluster up``."""
    ua = registrants("olga")
    assert ua.register([ua.agent.contact], expires=3600).status == 200
    reachable(cluster, "olga", ua.agent)
    for victim in sorted(cluster.worker_pids()):
        pid = cluster.worker_pids()[victim]
        os.kill(pid, signal.SIGKILL)
        # Back to two live workers (``up`` restarts the killed one).
        wait_for(lambda pid=pid: len([p for w, p in cluster.worker_pids().items() if p != pid]) == 2,
                 timeout=60, what=f"{victim} replaced after kill -9")
        owned = _call_ids_per_worker(cluster, set(cluster.worker_pids()))
        for worker, call_id in owned.items():
            status, reached = call_status(cluster, "olga", ua.agent, call_id=call_id)
            assert reached and status == 486, (victim, worker, status)
    # Bindings live in etcd: a new ``up`` against the same etcd knows them
    # without anyone registering again.
    assert cluster.stop() == 0
    cluster.start()
    wait_for(lambda: len(cluster.worker_pids()) == 2, timeout=60, what="workers after restart")
    owned = _call_ids_per_worker(cluster, set(cluster.worker_pids()))
    for worker, call_id in owned.items():
        status, reached = call_status(cluster, "olga", ua.agent, call_id=call_id)
        assert reached and status == 486, (worker, status)
