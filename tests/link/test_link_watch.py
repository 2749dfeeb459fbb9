"""LinkWatch: an outgoing link's state from its socket monitor, with a real
peer process that is stopped (SIGSTOP), continued and killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import trio
import zmq

from cluster.link import LinkWatch, Outbox
from cluster.link.zmq_trio import HEARTBEAT_TIMEOUT_MS

PEER = """
import sys, time, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.PULL)
sock.bind("tcp://127.0.0.1:0")
print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
while True:
    time.sleep(1)
"""


def test_stalled_and_killed_peers_are_reported_down_and_a_resumed_one_up():
    peer = subprocess.Popen([sys.executable, "-c", PEER], stdout=subprocess.PIPE, text=True)
    try:
        endpoint = peer.stdout.readline().strip()
        events: list[tuple[str, bool, float]] = []

        async def main():
            watch = LinkWatch()
            ctx = zmq.Context()
            outbox = Outbox(ctx, watch=watch)

            async def until(state: bool, since: int) -> float:
                with trio.fail_after(30):  # generous: a loaded machine
                    while not any(up is state for _, up, _ in events[since:]):
                        await trio.sleep(0.02)
                return next(t for _, up, t in events[since:] if up is state)

            async with trio.open_nursery() as nursery:
                await nursery.start(watch.run, lambda e, up: events.append((e, up, time.monotonic())))
                outbox.connect(endpoint)
                await until(True, 0)
                stopped_at = time.monotonic()
                os.kill(peer.pid, signal.SIGSTOP)
                n = len(events)
                down = await until(False, n)
                # Noticed by the missing heartbeats (about 1 s), not by TCP.
                assert down - stopped_at >= HEARTBEAT_TIMEOUT_MS / 1000 * 0.8
                os.kill(peer.pid, signal.SIGCONT)
                await until(True, len(events))
                n = len(events)
                peer.kill()
                await until(False, n)
                # A removed link is no longer reported.
                outbox.disconnect(endpoint)
                n = len(events)
                await trio.sleep(0.3)
                assert events[n:] == []
                nursery.cancel_scope.cancel()
            outbox.close()
            ctx.term()

        trio.run(main)
        assert {e for e, _, _ in events} == {endpoint}
    finally:
        if peer.poll() is None:
            os.kill(peer.pid, signal.SIGCONT)
            peer.kill()
        peer.wait()
