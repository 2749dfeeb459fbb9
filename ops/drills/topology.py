"""Hosts simulated with network namespaces, wired to one bridge.

Every name carries the runner's pid (``d<pid>-<host>`` namespaces,
``v<pid>-<host>`` veths, ``br<pid>`` bridge inside ``d<pid>-hub``) so
parallel runs never collide, and the addresses (``10.<a>.<b>.0/24``) exist
only inside these namespaces: nothing is routed to or from the machine's own
network. ``Topology.down`` removes everything it made and kills whatever runs
inside its namespaces; ``cleanup_on_exit`` makes sure it runs on any exit,
SIGINT and SIGTERM included.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["Host", "Topology", "cleanup_on_exit", "leftovers"]

NETNS_ETC = Path("/etc/netns")


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=check)


@dataclass(frozen=True, slots=True)
class Host:
    """One simulated machine: its namespace and its address on the bridge."""

    name: str
    netns: str
    address: str


@dataclass
class Topology:
    """``hosts`` maps a host name (at most 6 characters, so a veth name fits
    IFNAMSIZ) to the last octet of its address."""

    hosts: Mapping[str, int]
    tag: str = field(default_factory=lambda: f"d{os.getpid()}")
    resolver: str | None = None     # host name whose address goes into resolv.conf
    _made: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in self.hosts:
            if len(f"v{self.tag[1:]}-{name}") > 15:
                raise ValueError(f"host name {name!r} too long for a veth name with tag {self.tag!r}")
        pid = int(self.tag[1:]) if self.tag[1:].isdigit() else os.getpid()
        self.net = f"10.{200 + pid % 50}.{pid // 50 % 250}"

    @property
    def hub(self) -> str:
        return f"{self.tag}-hub"

    def host(self, name: str) -> Host:
        return Host(name, f"{self.tag}-{name}", f"{self.net}.{self.hosts[name]}")

    def address(self, name: str) -> str:
        return self.host(name).address

    def up(self) -> Topology:
        _ip("netns", "add", self.hub)
        self._made.append(self.hub)
        bridge = f"br{self.tag[1:]}"
        _ip("-n", self.hub, "link", "add", bridge, "type", "bridge")
        _ip("-n", self.hub, "link", "set", bridge, "up")
        for name in self.hosts:
            host = self.host(name)
            _ip("netns", "add", host.netns)
            self._made.append(host.netns)
            veth = f"v{self.tag[1:]}-{name}"
            # Created inside the hub, so no interface ever appears in the
            # machine's own namespace.
            _ip("-n", self.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", host.netns)
            _ip("-n", self.hub, "link", "set", veth, "master", bridge, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            if self.resolver is not None:
                # `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over
                # /etc/resolv.conf: the namespace's processes ask our dnsmasq.
                etc = NETNS_ETC / host.netns
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "resolv.conf").write_text(f"nameserver {self.address(self.resolver)}\n")
        return self

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.host(host).netns, *argv]

    def run(self, host: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(host, argv), capture_output=True, text=True, check=check,
                              timeout=timeout, input=input)

    def spawn(self, host: str, argv: Sequence[str], *, log: Path | None = None,
              cwd: Path | None = None, env: Mapping[str, str] | None = None) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``. ``ip netns exec`` execs the command,
        so the returned pid is the program's own (kill -9 and SIGSTOP reach it)."""
        out: IO[Any] | int = open(log, "ab") if log is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(self.argv(host, argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cwd,
                                    env=None if env is None else {**os.environ, **env})
        finally:
            if not isinstance(out, int):
                out.close()
        self._procs.append(proc)
        return proc

    def down(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                    proc.wait(5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        self._procs.clear()
        for netns in reversed(self._made):
            # Anything still inside (a daemonised child) belongs to this run.
            pids = _ip("netns", "pids", netns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            deadline = time.monotonic() + 10
            while _ip("netns", "del", netns, check=False).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
        self._made.clear()


def leftovers(tag: str) -> list[str]:
    """Namespaces named with ``tag`` that still exist (for tests and checks)."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(f"{tag}-")]


def cleanup_on_exit(topology: Topology, extra: Callable[[], None] | None = None) -> None:
    """Tear ``topology`` down on normal exit and on SIGINT/SIGTERM/SIGHUP: the
    signals are turned into SystemExit so ``finally`` blocks and atexit run."""
    def teardown() -> None:
        if extra is not None:
            extra()
        topology.down()

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    atexit.register(teardown)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
