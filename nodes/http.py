"""Each node's small HTTP endpoint: /healthz, /readyz, /status (JSON), /metrics.

- ``/healthz``: 200 while the process serves HTTP at all (liveness);
- ``/readyz``: 200 when the node is a member of the ring and etcd is
  reachable, else 503 with the reason (``node.readiness()``);
- ``/status``: the node's JSON status (what ``sipcluster status`` shows);
- ``/metrics``: Prometheus text format (``cluster.observability``).

Plain HTTP/1.1 with one request per connection is all probes and Prometheus
need; it runs in the node's trio loop and never blocks it (requests are
bounded in size and time).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import trio

log = logging.getLogger("sipcluster.http")

MAX_REQUEST = 8192


class StatusServer:
    def __init__(self, node, metrics: Callable[[], bytes] | None = None) -> None:
        self.node = node
        self.metrics = metrics
        self.url = ""

    async def run(self, listen: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        listeners = await trio.open_tcp_listeners(int(port), host=host)
        bound = listeners[0].socket.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}"
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.url)

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                line = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
                path = line[1].split("?", 1)[0] if len(line) >= 2 else "/"
                status, ctype, body = self.respond(path)
                head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
                await stream.send_all(head.encode() + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()

    def respond(self, path: str) -> tuple[str, str, bytes]:
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            # Ready = member of the ring and etcd reachable (DESIGN §9); the
            # body says why not, for `kubectl describe` and people.
            readiness = getattr(self.node, "readiness", None)
            if readiness is not None:
                ready, why = readiness()
            else:
                ready, why = bool(self.node.status().get("ready")), ""
            body = b"ready\n" if ready else f"not ready: {why}\n".encode()
            return ("200 OK" if ready else "503 Service Unavailable"), "text/plain", body
        if path in ("/status", "/"):
            return "200 OK", "application/json", json.dumps(self.node.status()).encode()
        if path == "/metrics" and self.metrics is not None:
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", self.metrics()
        return "404 Not Found", "text/plain", b"not found\n"
