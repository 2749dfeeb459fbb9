"""The faults a drill injects, and issue 18's targets for each.

A fault's ``inject`` runs at the fault moment and returns when the fault is
fully applied (a SIGSTOP'd worker continued, every node of a rolling upgrade
back); the load keeps running meanwhile.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from .cluster import DNS_TTL, EDGES, ETCDS, LOSS_DNS_TTL, WORKERS, DrillCluster, wait_until
from .measure import Target

__all__ = ["DRILLS", "Drill", "loss_ruleset", "etcd_cut_ruleset"]

Inject = Callable[[DrillCluster], None]


@dataclass(frozen=True)
class Drill:
    name: str
    fault: str
    inject: Inject
    targets: tuple[Target, ...]
    dns_ttl: int = DNS_TTL    # the carrier's DNS records (cluster.DNS_TTL says why it varies)
    lossy_callee: bool = False  # traffic.Callee(lossy=True): the callee for packet loss


# -- targets (issue 18, point 5) ---------------------------------------------

NO_ESTABLISHED_LOST = Target("0 established calls lost", lambda o: o.established_lost == 0,
                             lambda o: f"{o.established_lost} lost of {o.established_at_fault}")
NEW_ONLY_FIRST_SECOND = Target("new calls failed only within the first second after the fault",
                               lambda o: o.new_failed_late == 0,
                               lambda o: f"{o.new_failed} failed, {o.new_failed_late} outside that second")
NO_REGISTRATION_LOST = Target("0 registrations lost", lambda o: o.registrations_lost == 0,
                              lambda o: f"{o.registrations_lost} of {o.registrations} lost, "
                                        f"{o.refreshes_failed} re-registrations failed")
NO_FAILED_CALLS = Target("no failed calls", lambda o: o.failed == 0,
                         lambda o: f"{o.established_lost} established lost, {o.new_failed} new failed")
ZERO_FAILED_CALLS = Target("0 failed calls", NO_FAILED_CALLS.check, NO_FAILED_CALLS.shows)
NO_DUPLICATES = Target("no duplicate processing", lambda o: o.stray_messages == 0,
                       lambda o: f"{o.stray_messages} stray answers or requests at the caller and callee")
NO_STUCK = Target("no stuck calls", lambda o: o.stuck_calls == 0,
                  lambda o: f"{o.stuck_calls} calls still held at the end")
NINETY_NINE = Target(">= 99 % of calls complete through retransmission", lambda o: o.completed_ratio_after_fault >= 0.99,
                     lambda o: f"{100 * o.completed_ratio_after_fault:.1f} % of the calls started "
                               "during the loss completed")
# Established calls survive an edge loss through the carrier's SRV failover;
# the caller's non-INVITE transaction lasts Timer F, so a call that ended is
# one whose BYE reached a surviving edge within it.
IN_DIALOG_WITHIN_TIMER_F = Target("in-dialog requests of established calls reach a surviving edge "
                                  "within Timer F (32 s) via the peer's failover",
                                  lambda o: o.established_lost == 0,
                                  lambda o: f"{o.established_lost} established calls lost of "
                                            f"{o.established_at_fault}")


# -- faults --------------------------------------------------------------------

def kill(host: str) -> Inject:
    def inject(cluster: DrillCluster) -> None:
        cluster.nodes[host].signal(signal.SIGKILL)
    return inject


def link_down(host: str) -> Inject:
    """The host's only interface goes down: cut from etcd and the edges alike."""
    def inject(cluster: DrillCluster) -> None:
        cluster.topology.run(host, ["ip", "link", "set", "eth0", "down"])
    return inject


def pause(host: str, seconds: float) -> Inject:
    def inject(cluster: DrillCluster) -> None:
        cluster.nodes[host].signal(signal.SIGSTOP)
        time.sleep(seconds)
        cluster.event(f"SIGCONT {host}")
        cluster.nodes[host].signal(signal.SIGCONT)
    return inject


def etcd_cut_ruleset(table: str, etcd_addresses: list[str]) -> str:
    """Drop everything between this host and the etcd members, both ways."""
    members = ", ".join(etcd_addresses)
    return f"""table inet {table} {{
  chain out {{ type filter hook output priority 0; ip daddr {{ {members} }} drop; }}
  chain in {{ type filter hook input priority 0; ip saddr {{ {members} }} drop; }}
}}
"""


def loss_ruleset(table: str, percent: int) -> str:
    """Drop ``percent`` % of the SIP datagrams (UDP other than DNS) arriving at
    this host: nftables' ``numgen random``, as netem is not available here."""
    return f"""table inet {table} {{
  chain in {{ type filter hook input priority 0;
    meta l4proto udp udp sport != 53 udp dport != 53 numgen random mod 100 < {percent} drop; }}
}}
"""


def cut_from_etcd(host: str, seconds: float) -> Inject:
    def inject(cluster: DrillCluster) -> None:
        table = f"drill{cluster.topology.tag[1:]}"
        cluster.nft(host, etcd_cut_ruleset(table, [cluster.addr(h) for h in ETCDS]))
        time.sleep(seconds)
        cluster.event(f"{host} reconnected to etcd")
        cluster.nft(host, f"delete table inet {table}\n")
    return inject


SIP_HOSTS = ("kam", *EDGES, "uas", "uac", "reg")


def sip_loss(percent: int) -> Inject:
    def inject(cluster: DrillCluster) -> None:
        # Lasts until the end of the run: every call started after the fault
        # crosses lossy links on each hop.
        for host in SIP_HOSTS:
            cluster.nft(host, loss_ruleset(f"drill{cluster.topology.tag[1:]}", percent))
    return inject


def rolling_upgrade(cluster: DrillCluster) -> None:
    """Every node, one at a time: SIGTERM (a worker drains: it leaves the ring
    and finishes its transactions; an edge leaves the membership), wait for
    it to exit, start it again with the same configuration, wait until it is
    back in the membership (etcd: until the cluster answers), then the next."""
    for host in (*WORKERS, *EDGES, *ETCDS):
        node = cluster.nodes[host]
        assert node.proc is not None
        cluster.event(f"SIGTERM {host}")
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(60)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()
        cluster.event(f"start {host}")
        cluster.launch(host)
        wait_until(functools.partial(back, cluster, host, node.role), timeout=60,
                   what=f"{host} back in service")
        cluster.event(f"{host} back")
        time.sleep(1)


def back(cluster: DrillCluster, host: str, role: str) -> bool:
    """A restarted node serves again: a cluster node is in the membership, an
    etcd member listens for clients again (its peers served meanwhile)."""
    if role == "etcd":
        return ":2379" in cluster.topology.run(host, ["ss", "-Hltn"], check=False).stdout
    return host in cluster.members().get(role, [])


DRILLS: dict[str, Drill] = {d.name: d for d in (
    Drill("worker-kill", "kill -9 of worker w1", kill("w1"), (NO_ESTABLISHED_LOST, NEW_ONLY_FIRST_SECOND)),
    Drill("worker-link-down", "worker host w1 cut off (its link down)", link_down("w1"),
          (NO_ESTABLISHED_LOST, NEW_ONLY_FIRST_SECOND)),
    Drill("edge-kill", "kill -9 of edge edge1", kill("edge1"), (IN_DIALOG_WITHIN_TIMER_F, NO_REGISTRATION_LOST)),
    Drill("etcd-kill", "kill -9 of etcd member etcd1", kill("etcd1"), (NO_FAILED_CALLS,)),
    Drill("worker-stop", "SIGSTOP of worker w1 for 10 s, then SIGCONT", pause("w1", 10.0),
          (NO_DUPLICATES, NO_STUCK)),
    Drill("worker-etcd-cut", "worker w1 cut from etcd (nftables) for 15 s, still reachable by the edges",
          cut_from_etcd("w1", 15.0), (NO_ESTABLISHED_LOST, NO_DUPLICATES)),
    Drill("sip-loss", "20 % loss of SIP datagrams at every SIP host (nftables numgen)", sip_loss(20),
          (NINETY_NINE,), dns_ttl=LOSS_DNS_TTL, lossy_callee=True),
    Drill("rolling-upgrade", "rolling restart of every node (workers drained), one at a time",
          rolling_upgrade, (ZERO_FAILED_CALLS,)),
)}
