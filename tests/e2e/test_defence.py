"""Edge defences end to end (issue 19 part 1): one ``sipcluster up`` (two
workers, real etcd) with ``edge.rate_limit`` 5/s, burst 10, one exempt
address and ``worker.auth_fail_limit`` 4. Attackers and clients are distinct
loopback addresses (127.0.0.x), so a ban of one leaves the others alone.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
import uuid

import pytest

from .harness import SipAgent, UpCluster, answer_challenge, wait_for

LEGIT = "127.0.0.1"
FLOODER = "127.0.0.66"
EXEMPT = "127.0.0.9"
SCANNER = "127.0.0.20"
GUESSER = "127.0.0.30"
AUTH_FAIL_LIMIT = 4


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("defence"), workers=2, etcd=etcd_server.endpoint, env={
        "SIPCLUSTER_EDGE_RATE_LIMIT": "5", "SIPCLUSTER_EDGE_RATE_BURST": "10",
        "SIPCLUSTER_EDGE_RATE_BAN_TIME": "300", "SIPCLUSTER_EDGE_RATE_EXEMPT": f"{EXEMPT}/32",
        "SIPCLUSTER_WORKER_AUTH_FAIL_LIMIT": str(AUTH_FAIL_LIMIT),
        "SIPCLUSTER_WORKER_AUTH_BAN_TIME": "300",
        # The guesser must be outside the trusted networks: a trusted source
        # (an SBC) is never banned for its users' failures.
        "SIPCLUSTER_WORKER_TRUSTED": f"{LEGIT}/32",
    }).start()
    try:
        wait_for(lambda: options_from(LEGIT, up.port) == 200, timeout=60, what="the cluster answers")
        yield up
    finally:
        up.stop()


def options_message(source: tuple[str, int], port: int, agent: str | None = None) -> bytes:
    call_id = uuid.uuid4().hex
    lines = [f"OPTIONS sip:127.0.0.1:{port} SIP/2.0",
             f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
             "Max-Forwards: 70", "To: <sip:127.0.0.1>", f"From: <sip:probe@{source[0]}>;tag=p1",
             f"Call-ID: {call_id}", "CSeq: 1 OPTIONS"]
    if agent is not None:
        lines.append(f"User-Agent: {agent}")
    return ("\r\n".join(lines + ["Content-Length: 0", "", ""])).encode()


def options_from(host: str, port: int, agent: str | None = None, timeout: float = 2.0) -> int:
    """One OPTIONS from ``host``; the status, or 0 when nothing came back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(timeout)
        sock.sendto(options_message(sock.getsockname(), port, agent), ("127.0.0.1", port))
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionError):
            return 0
    return int(data.split(b" ", 2)[1])


def flood(host: str, port: int, count: int = 1000) -> int:
    """``count`` OPTIONS from ``host`` as fast as the socket takes them;
    returns how many answers came back while sending and just after."""
    answers = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.setblocking(False)
        source = sock.getsockname()
        for _ in range(count):
            sock.sendto(options_message(source, port), ("127.0.0.1", port))
            try:
                while sock.recv(65536):
                    answers += 1
            except (BlockingIOError, ConnectionError):
                pass
        sock.settimeout(2.0)
        try:
            while sock.recv(65536):
                answers += 1
        except (TimeoutError, ConnectionError):
            pass
    return answers


def bans(cluster: UpCluster) -> list[dict]:
    result = cluster.cli("bans", "list", "--json", "--etcd", cluster.etcd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def banned(cluster: UpCluster, subject: str) -> dict | None:
    return next((b for b in bans(cluster) if b["subject"] == subject), None)


def edge_metric(cluster: UpCluster, reason: str) -> float:
    total = 0.0
    for member in cluster.status()["members"]:
        if member["role"] != "edge":
            continue
        text = urllib.request.urlopen(member["metrics"], timeout=10).read().decode()
        for match in re.finditer(r'^sipcluster_drops_total\{([^}]*)\} (\S+)$', text, re.M):
            if f'reason="{reason}"' in match.group(1):
                total += float(match.group(2))
    return total


def test_a_flooding_source_is_banned_listed_and_lifted(cluster):
    before = edge_metric(cluster, "banned")
    answered = flood(FLOODER, cluster.port, 1000)
    # Burst 10 at 5/s: a few more than ten while the flood lasts, never most.
    assert 10 <= answered < 100, answered
    assert options_from(FLOODER, cluster.port) == 0
    assert edge_metric(cluster, "rate_limited") >= 1
    assert edge_metric(cluster, "banned") - before >= 800
    ban = wait_for(lambda: banned(cluster, FLOODER), timeout=30, what="the rate ban in bans list")
    assert ban["kind"] == "addr" and ban["reason"] == "rate" and 200 < ban["seconds_left"] <= 300
    # Others are answered meanwhile.
    assert options_from(LEGIT, cluster.port) == 200
    text = cluster.cli("bans", "list", "--etcd", cluster.etcd)
    assert FLOODER in text.stdout and "reason=rate" in text.stdout
    lifted = cluster.cli("bans", "del", FLOODER, "--etcd", cluster.etcd)
    assert lifted.returncode == 0, lifted.stderr
    wait_for(lambda: options_from(FLOODER, cluster.port, timeout=1.0) == 200, timeout=30,
             what="answers to the source after bans del")
    assert banned(cluster, FLOODER) is None
    again = cluster.cli("bans", "del", FLOODER, "--etcd", cluster.etcd)
    assert again.returncode == 1 and "no ban" in again.stderr


def test_an_exempt_source_is_not_banned(cluster):
    flood(EXEMPT, cluster.port, 1000)
    assert options_from(EXEMPT, cluster.port) == 200
    assert banned(cluster, EXEMPT) is None


def test_a_scanner_user_agent_gets_no_answer(cluster):
    before = edge_metric(cluster, "scanner")
    assert options_from(SCANNER, cluster.port, agent="friendly-scanner") == 0
    assert options_from(SCANNER, cluster.port, agent="sipvicious 0.3.4") == 0
    assert options_from(SCANNER, cluster.port, agent="Linphone/5.2") == 200
    assert options_from(SCANNER, cluster.port) == 200
    assert edge_metric(cluster, "scanner") - before == 2
    assert banned(cluster, SCANNER) is None


def test_password_guessing_bans_the_address_on_the_edge(cluster):
    cluster.user("add", "guessed@localhost", password="right-password")
    with SipAgent(GUESSER) as agent:
        for attempt in range(AUTH_FAIL_LIMIT):
            request = agent.request("REGISTER", "sip:localhost", call_id=uuid.uuid4().hex, cseq=1,
                                    from_="sip:guessed@localhost", to="sip:guessed@localhost",
                                    headers=[("Contact", f"<{agent.contact}>")])
            challenge = agent.transact(request, cluster.port)
            if challenge is None:
                break  # already banned at the edge: nothing comes back
            assert challenge.status == 401
            wrong = answer_challenge(agent, request, challenge, username="guessed",
                                     password=f"guess-{attempt}")
            response = agent.transact(wrong, cluster.port, timeout=4.0)
            assert response is None or response.status in (401, 403)
    ban = wait_for(lambda: banned(cluster, GUESSER), timeout=30, what="the address ban in bans list")
    assert ban["kind"] == "addr" and ban["reason"] == "auth" and 200 < ban["seconds_left"] <= 300
    assert ban["until"] > 0
    wait_for(lambda: options_from(GUESSER, cluster.port, timeout=1.0) == 0, timeout=30,
             what="the edge dropping the guesser")
    assert options_from(LEGIT, cluster.port) == 200
    user = banned(cluster, "guessed@localhost")
    assert user is not None and user["kind"] == "user" and user["reason"] == "auth"
    # The user is refused 403 by every worker, from any address, even with
    # the right password (the ban reached both workers through etcd).
    with SipAgent(LEGIT) as agent:
        for _ in range(4):
            request = agent.request("REGISTER", "sip:localhost", call_id=uuid.uuid4().hex, cseq=1,
                                    from_="sip:guessed@localhost", to="sip:guessed@localhost",
                                    headers=[("Contact", f"<{agent.contact}>")])
            challenge = agent.transact(request, cluster.port)
            assert challenge is not None and challenge.status == 401
            right = answer_challenge(agent, request, challenge, username="guessed",
                                     password="right-password")
            response = agent.transact(right, cluster.port)
            assert response is not None and response.status == 403, response
