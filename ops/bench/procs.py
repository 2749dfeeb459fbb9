"""Per-process counters from /proc, named by role: what the benchmarks read
to split a system's CPU between its processes (issue 21 points 4 and 5).

Pure functions over /proc's text (``role``, ``parse_stat``,
``parse_switches``, ``split_cpu``) so that tests can feed them recorded
inputs; ``read_roles`` is the thin reader.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Reading:
    """One process's (or role's) counters: CPU seconds (utime + stime) and
    its threads' voluntary context switches: its wake-ups."""
    cpu: float
    switches: int
    kernel: float = 0.0
    """The part of ``cpu`` spent in the kernel (stime): syscalls and wake-ups."""


def role(cmdline: bytes) -> str:
    """A process's role from its NUL-separated command line: edge-1,
    worker-2 (the node's config file), supervisor (``cluster.cli up``), else
    the program's name (etcd, kamailio, sipp)."""
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    if not argv:
        return "?"
    text = " ".join(argv)
    node = re.search(r"\b(edge-\d+|worker-\d+)\.toml", text)
    if node:
        return node.group(1)
    if "cluster.cli" in argv and "up" in argv:
        return "supervisor"
    return Path(argv[0]).name


def parse_stat(text: str) -> tuple[float, float]:
    """utime + stime and stime, in seconds, from a /proc/<pid>/stat line (the
    command name in brackets may hold spaces and brackets: split after the last)."""
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ, int(fields[12]) / HZ


def parse_switches(status: str) -> int:
    """Voluntary context switches from a /proc/<pid>/task/<tid>/status: the
    times the thread blocked and was woken again. Involuntary ones (the
    thread preempted) count other processes' load, not the thread's wake-ups."""
    found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


def read_process(pid: int) -> Reading | None:
    """A live process's counters, its threads' switches summed; None once gone."""
    try:
        cpu, kernel = parse_stat(Path(f"/proc/{pid}/stat").read_text())
        switches = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                switches += parse_switches(Path(f"/proc/{pid}/task/{tid}/status").read_text())
            except OSError:
                continue
    except OSError:
        return None
    return Reading(cpu, switches, kernel)


def role_of(pid: int) -> str | None:
    try:
        return role(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return None


def read_roles(pids: Iterable[int]) -> dict[str, Reading]:
    """Counters summed by role (Kamailio's many processes are one role)."""
    totals: dict[str, Reading] = {}
    for pid in pids:
        name = role_of(pid)
        reading = read_process(pid) if name is not None else None
        if name is None or reading is None:
            continue
        had = totals.get(name, Reading(0.0, 0))
        totals[name] = Reading(had.cpu + reading.cpu, had.switches + reading.switches,
                               had.kernel + reading.kernel)
    return totals


def split_cpu(before: dict[str, Reading], after: dict[str, Reading]) -> dict[str, Reading]:
    """What each role used between two readings (a role seen only after
    counts from zero: a process started meanwhile)."""
    zero = Reading(0.0, 0)
    return {name: Reading(max(0.0, end.cpu - before.get(name, zero).cpu),
                          max(0, end.switches - before.get(name, zero).switches),
                          max(0.0, end.kernel - before.get(name, zero).kernel))
            for name, end in sorted(after.items())}


SENT = ("sent_udp", "sent_tcp", "sent_tls", "sent_ws", "sent_wss")
"""The edge's counters of messages it wrote to the network (``nodes/edge``)."""


def edge_messages(before: dict[str, int], after: dict[str, int]) -> int:
    """Messages an edge handled between two readings of its counters: those
    it forwarded to a worker plus those it sent out for one."""
    return sum(after.get(k, 0) - before.get(k, 0) for k in ("forwarded", *SENT))


def call_figures(used: dict[str, Reading], calls: int, edge_msgs: int | None) -> dict[str, float]:
    """From what each role used over a run of ``calls`` completed calls:
    ``cpu``, ms of CPU per call of the whole system under test (SIPp is not
    in ``used``); ``workers_us``, µs per call of every worker together;
    ``edge_us``, µs per message of the edges (when their counters were read);
    ``etcd_us``, µs per call of etcd."""
    if calls <= 0:
        return {}
    figures = {"cpu": sum(r.cpu for r in used.values()) * 1000 / calls}
    workers = [r.cpu for name, r in used.items() if name.startswith("worker-")]
    if workers:
        figures["workers_us"] = sum(workers) * 1e6 / calls
    if "etcd" in used:
        figures["etcd_us"] = used["etcd"].cpu * 1e6 / calls
    edges = [r.cpu for name, r in used.items() if name.startswith("edge-")]
    if edges and edge_msgs:
        figures["edge_us"] = sum(edges) * 1e6 / edge_msgs
    return figures
