"""Kamailio (Debian's ``kamailio``) as a real SIP peer of the cluster in
end-to-end tests: a record-routing stateful proxy on a free loopback port,
started in the foreground with a configuration the test writes, its own
runtime directory and pid file, so several run side by side.

One configuration serves both roles a carrier network gives Kamailio: the
upstream proxy in front of the cluster (every initial request goes to the
cluster) and the outbound proxy behind it (every initial request goes to
the carrier's side). Each request it sees is logged as a ``KAMAILIO-SAW``
line, so a test can tell which in-dialog requests passed through it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from .harness import free_port_pair, options, wait_for

CONFIG = r"""#!KAMAILIO
# Written by tests/e2e/kamailio.py: a stateful, record-routing proxy that
# sends every initial request to NEXT_HOP and in-dialog requests by their
# Route set (loose routing, RFC 3261 §16.12).
#!define NEXT_HOP "sip:{next_hop}"

debug=2
log_stderror=yes
log_prefix="{name} "
auto_aliases=no
disable_tcp=yes
dns=no
rev_dns=no
use_dns_cache=off
server_header="Server: kamailio-{name}"
user_agent_header="User-Agent: kamailio-{name}"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "xlog.so"

# One Record-Route with ;lr (a single interface).
modparam("rr", "enable_full_lr", 0)

request_route {{
	xlog("L_NOTICE", "KAMAILIO-SAW $rm $ru totag=$tt callid=$ci\n");
	if (!mf_process_maxfwd_header("10")) {{
		sl_send_reply("483", "Too Many Hops");
		exit;
	}}
	# The harness's readiness probe, addressed to the proxy itself.
	if (is_method("OPTIONS") && uri == myself) {{
		sl_send_reply("200", "OK");
		exit;
	}}
	if (has_totag()) {{
		if (loose_route()) {{
			route(RELAY);
		}}
		if (is_method("ACK")) {{
			if (t_check_trans()) {{
				t_relay();
			}}
			exit;
		}}
		sl_send_reply("404", "Not Here");
		exit;
	}}
	if (is_method("CANCEL")) {{
		if (t_check_trans()) {{
			t_relay();
		}}
		exit;
	}}
	t_check_trans();
	# A preloaded Route (the cluster's outbound proxy setting names us).
	remove_hf("Route");
	record_route();
	$du = NEXT_HOP;
	route(RELAY);
}}

route[RELAY] {{
	if (!t_relay()) {{
		sl_reply_error();
	}}
	exit;
}}
"""


class KamailioProcess:
    """Debian's Kamailio in the foreground (``-DD -E``) with the
    configuration ``config``, in ``directory``: its runtime directory, pid
    file and log are its own, so several run side by side. ``listen`` are
    ``-l`` arguments (a configuration may name its sockets itself)."""

    def __init__(self, directory: Path, config: str, *, listen: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "kamailio.cfg"
        self.config.write_text(config)
        self.log_path = self.dir / "kamailio.log"
        self.listen = listen
        self.process: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        runtime = self.dir / "run"
        runtime.mkdir(exist_ok=True)
        sockets = [arg for address in self.listen for arg in ("-l", address)]
        return ["kamailio", "-f", str(self.config), "-DD", "-E", *sockets,
                "-Y", str(runtime), "-P", str(self.dir / "kamailio.pid"), "-m", "64", "-M", "8",
                "-n", "1", "-w", str(self.dir)]

    def start(self, ready: Callable[[], bool], what: str) -> None:
        """Start it and wait until ``ready()`` (or it exits, which fails with its log)."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.dir)
        process = self.process
        wait_for(lambda: process.poll() is not None or ready(), timeout=60, what=what)
        assert process.poll() is None, f"{what}: kamailio exited:\n{self.log()[-3000:]}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Kamailio:
    """One Kamailio named ``name`` on 127.0.0.1:``port`` relaying initial
    requests to ``next_hop`` (``host:port``)."""

    def __init__(self, workdir: Path, name: str, next_hop: str, *, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port_pair()
        self.process = KamailioProcess(workdir / f"kamailio-{name}-{os.getpid()}",
                                       CONFIG.format(name=name, next_hop=next_hop),
                                       listen=(f"udp:127.0.0.1:{self.port}",))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Kamailio:
        self.process.start(lambda: options(self.port, timeout=0.5)[0] == 200,
                           f"kamailio {self.name} answering OPTIONS")
        return self

    def log(self) -> str:
        return self.process.log()

    def saw(self, call_id: str) -> list[tuple[str, bool]]:
        """(method, in dialog) of every request of ``call_id`` it handled, in order."""
        return [(m.group(1), m.group(2) not in ("<null>", ""))
                for m in re.finditer(r"KAMAILIO-SAW (\S+) \S+ totag=(\S*) callid=(\S+)", self.log())
                if m.group(3) == call_id]

    def stop(self) -> None:
        self.process.stop()
