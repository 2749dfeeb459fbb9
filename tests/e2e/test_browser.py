"""A browser calling a browser through the cluster (issue 20 part 5).

Two JsSIP phones (npm ``jssip``, bundled for the page with esbuild) run in
headless Chromium (Debian's ``chromium``, driven by ``playwright-core``
from tests/browser/run.mjs) with fake audio devices. Both register over WSS
with a certificate from the test CA (RFC 7118, with JsSIP's RFC 5626
``reg-id`` and ``+sip.instance``: strict flows), one calls the other, the
call is answered, each side's WebRTC statistics show inbound RTP packets
(media flows between the two pages over loopback; SIP through the cluster),
and the caller hangs up. ops/dev.sh install puts chromium and the npm
packages in place; this test installs nothing.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
import uuid

import pytest

from tests.e2e.harness import ROOT
from tests.e2e.secure import edge_stats, start_secure
from tests.support.pki import make_pki

pytestmark = pytest.mark.e2e

BROWSER = ROOT / "tests" / "browser"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    up = start_secure(etcd_server.endpoint, tmp_path_factory.mktemp("browser"), pki, transports=("wss",))
    yield up
    up.stop()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The test page and the JsSIP bundle, served over HTTP on loopback."""
    root = tmp_path_factory.mktemp("page")
    shutil.copy(BROWSER / "page.html", root / "page.html")
    subprocess.run([str(BROWSER / "node_modules" / ".bin" / "esbuild"),
                    str(BROWSER / "node_modules" / "jssip" / "lib-es5" / "JsSIP.js"), "--bundle",
                    "--format=iife", "--global-name=JsSIP", f"--outfile={root / 'jssip.js'}",
                    "--log-level=warning"], check=True, timeout=120)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/page.html"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        pass


def test_two_browsers_call_each_other_over_wss(cluster, page):
    users = {}
    for role in ("caller", "callee"):
        name, password = f"web{role}-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
        cluster.user("add", f"{name}@localhost", password=password)
        users[role] = {"ws": f"wss://127.0.0.1:{cluster.wss_port}", "uri": f"sip:{name}@localhost",
                       "password": password}
    settings = {"chromium": CHROMIUM, "page": page, "timeout_ms": 150_000, "packets": 25,
                "target": users["callee"]["uri"], **users}
    run = subprocess.run(["node", str(BROWSER / "run.mjs"), json.dumps(settings)], cwd=BROWSER,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["steps"] == ["registered", "confirmed", "media", "ended"], \
        (result, cluster.logs())
    # Audio flowed both ways: each page received RTP (WebRTC getStats).
    assert result["caller"]["packets"] >= 25 and result["callee"]["packets"] >= 25
    assert "incoming" in result["callee"]["events"]
    assert any(e.startswith("ended:local") for e in result["caller"]["events"])
    assert any(e.startswith("ended:remote") for e in result["callee"]["events"])
    stats = edge_stats(cluster)
    assert stats.get("sent_wss", 0) >= 8, stats
