"""baresip registering and calling over TLS (issue 20 part 5).

Debian's baresip runs with a configuration directory this test writes:
SIP on loopback, the test CA as its CA file, an account with the cluster's
TLS port as outbound proxy and RFC 5626 outbound on (``sipnat=outbound``:
``+sip.instance``, ``reg-id``, keep-alives), calls answered automatically,
and its ctrl_tcp module for commands and events. It registers over TLS (a
strict flow), a UDP caller reaches it over that connection, and it calls a
UDP user of the cluster (digest challenge answered) with the dialog going
over TLS on its side.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from cluster.sip import make_response
from tests.e2e.harness import Registrant, SipAgent, UpCluster, free_port_pair, wait_for
from tests.e2e.secure import start_secure, terminate
from tests.support.pki import make_pki

pytestmark = pytest.mark.e2e

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"

CONFIG = """poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{sip_port}
sip_cafile\t\t{ca}
call_local_timeout\t120
call_max_calls\t\t4
audio_player\t\taubridge,sink
audio_source\t\taubridge,sink
audio_alert\t\taubridge,sink
module_path\t\t/usr/lib/baresip/modules
module\t\t\tg711.so
module\t\t\taubridge.so
module_tmp\t\tuuid.so
module_tmp\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}
"""

# An answer (and offer) for G.711 whose media goes to the discard port on loopback.
SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")

ACCOUNT = ('<sip:{user}@localhost;transport=tls>;auth_pass={password};'
           'outbound="sip:127.0.0.1:{tls_port};transport=tls";sipnat=outbound;regint=600;answermode=auto\n')


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory, pki):
    up = start_secure(etcd_server.endpoint, tmp_path_factory.mktemp("baresip-cluster"), pki)
    yield up
    up.stop()


class Baresip:
    """baresip in its own config directory, commanded over ctrl_tcp
    (netstring JSON); its events are collected as they come."""

    def __init__(self, directory: Path, pki, cluster: UpCluster, user: str, password: str) -> None:
        self.ctrl_port = free_port_pair()
        (directory / "config").write_text(CONFIG.format(sip_port=free_port_pair(), ca=pki.ca,
                                                        ctrl_port=self.ctrl_port))
        (directory / "accounts").write_text(ACCOUNT.format(user=user, password=password,
                                                           tls_port=cluster.tls_port))
        (directory / "contacts").write_text("")
        self.log = directory / "baresip.log"
        # -n 127.0.0.1: its addresses (SDP included) are loopback ones.
        self.process = subprocess.Popen([BARESIP, "-n", "127.0.0.1", "-f", str(directory)], stdin=subprocess.DEVNULL,
                                        stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self.ctrl = wait_for(self._connect, timeout=30, what="baresip's ctrl_tcp")
        self.buffer = b""
        self.events: list[dict] = []

    def _connect(self):
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            return socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=2)
        except OSError:
            return None

    def command(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": uuid.uuid4().hex[:8]}).encode()
        self.ctrl.sendall(str(len(body)).encode() + b":" + body + b",")

    def _read(self, timeout: float) -> None:
        self.ctrl.settimeout(timeout)
        try:
            data = self.ctrl.recv(65536)
        except TimeoutError:
            return
        self.buffer += data
        while b":" in self.buffer:
            length, _, rest = self.buffer.partition(b":")
            if not length.isdigit() or len(rest) < int(length) + 1:
                break
            body, self.buffer = rest[:int(length)], rest[int(length) + 1:]
            try:
                self.events.append(json.loads(body))
            except ValueError:
                continue

    def wait_event(self, kind: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("type") == kind:
                    self.events.remove(event)
                    return event
            self._read(0.2)
        raise AssertionError(f"no {kind} from baresip: {self.events[-10:]}\n{self.log.read_text()[-3000:]}")

    def registered(self) -> None:
        """Wait for the 200 to its REGISTER over TLS (its log says so; the
        event may come before ctrl_tcp is connected)."""
        wait_for(lambda: "{1/TLS/v4} 200 OK" in self.log.read_text(), timeout=60,
                 what="baresip registered over TLS")

    def stop(self) -> None:
        self.ctrl.close()
        terminate(self.process)


@pytest.fixture
def phone(tmp_path, pki, cluster):
    user, password = f"bare-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    cluster.user("add", f"{user}@localhost", password=password)
    baresip = Baresip(tmp_path, pki, cluster, user, password)
    baresip.user = user
    yield baresip
    baresip.stop()


def test_baresip_registers_over_tls_and_is_called_over_its_flow(cluster, phone):
    phone.registered()
    call_id = f"bare-in-{uuid.uuid4().hex}"
    with SipAgent() as caller:
        invite = caller.request("INVITE", f"sip:{phone.user}@localhost", call_id=call_id, cseq=1,
                                from_="sip:carol@example.org", to=f"sip:{phone.user}@localhost",
                                headers=[("Contact", caller.contact)])

        def answered():
            response = caller.transact(invite, cluster.port, timeout=10)
            return response if response is not None and response.status == 200 else None
        # Audio-free SDP-less INVITE: baresip answers with its own offer.
        ok = wait_for(answered, timeout=60, what="baresip answering over its TLS flow")
        routes = [("Route", r) for r in reversed(ok.get_all("record-route"))]
        assert any("transport=tls" in r and "sfl=" in r for _, r in routes), \
            "baresip's side of the route is its TLS flow"
        remote = str(ok.contacts[0].uri)
        caller.send(caller.request("ACK", remote, call_id=call_id, cseq=1, from_="sip:carol@example.org",
                                   to=ok.get("to"), headers=[*routes, ("Content-Type", "application/sdp")],
                                   body=SDP), cluster.port)
        phone.wait_event("CALL_ESTABLISHED")
        bye = caller.request("BYE", remote, call_id=call_id, cseq=2, from_="sip:carol@example.org",
                             to=ok.get("to"), headers=routes)
        done = caller.transact(bye, cluster.port, timeout=20)
        assert done is not None and done.status == 200
    phone.wait_event("CALL_CLOSED")


def test_baresip_calls_a_cluster_user_over_tls(cluster, phone):
    phone.registered()
    user, password = f"udp-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    cluster.user("add", f"{user}@localhost", password=password)
    callee = Registrant(cluster.port, user, password)
    try:
        assert callee.register([f"<{callee.agent.contact}>"], expires=600).status == 200
        agent = callee.agent

        def rings():
            phone.command("dial", f"sip:{user}@localhost")
            got, source = agent.receive(lambda m: getattr(m, "method", None) == "INVITE", timeout=10)
            if got is None:
                phone.command("hangup")
                return None
            return got, source
        incoming, source = wait_for(rings, timeout=90, what="baresip's INVITE at the UDP user")
        vias = [v.transport for v in incoming.vias]
        assert vias[-1] == "TLS" and vias[0] == "UDP", f"baresip over TLS, the cluster on to UDP: {vias}"
        answer = make_response(incoming, 200, to_tag="udp-callee", body=SDP,
                               headers=[("Contact", agent.contact), ("Content-Type", "application/sdp"),
                                        *[("Record-Route", r) for r in incoming.get_all("record-route")]])
        agent.sock.sendto(answer.to_bytes(), source)
        ack, _ = agent.receive(lambda m: getattr(m, "method", None) == "ACK" and m.call_id == incoming.call_id,
                               timeout=30)
        assert ack is not None, "baresip's ACK came through the cluster"
        phone.command("hangup")
        bye, bye_source = agent.receive(lambda m: getattr(m, "method", None) == "BYE"
                                        and m.call_id == incoming.call_id, timeout=30)
        assert bye is not None, "baresip's BYE came through the cluster"
        agent.sock.sendto(make_response(bye, 200).to_bytes(), bye_source)
    finally:
        callee.close()
