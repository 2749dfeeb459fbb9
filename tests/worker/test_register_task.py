"""The worker's registration task: a failure inside the registrar costs that
REGISTER an answer (500, or 400 for a malformed field), never the worker.

A real WorkerNode in trio with the in-memory location store; its PUSH
sockets are replaced by a list."""

from __future__ import annotations

import time

import trio

from cluster.app.api import Application
from cluster.link import Envelope, pack, unpack
from cluster.registrar.rules import DEFAULT_POLICY
from cluster.registrar.store import MemoryLocationStore
from cluster.sip import parse_message
from nodes.worker.registrations import Registrations

from .test_cancel_without_context import CALLER, EDGE, EDGE_ADDR, _worker

OPEN = "localhost"  # the test worker's local domain


def register(n: int, extra: str = "") -> bytes:
    return (
        f"REGISTER sip:{OPEN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-reg-{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:u{n}@{OPEN}>;tag=r{n}\r\nTo: <sip:u{n}@{OPEN}>\r\n"
        f"Call-ID: reg-{n}@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:u{n}@127.0.0.1:5999>\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


class BrokenStore(MemoryLocationStore):
    async def read(self, aor):
        raise RuntimeError("a bug in the store")


def run(worker, *datagrams: bytes) -> list:
    """Feed the REGISTERs, wait (bounded) until each is answered; the answers."""
    async def main():
        async with trio.open_nursery() as nursery:
            worker._nursery = nursery
            for data in datagrams:
                env = unpack(pack(Envelope("in", EDGE, "UDP", CALLER, EDGE_ADDR, data, None,
                                           time.time_ns(), None, "127.0.0.1:5060", EDGE)))
                worker.receive(env, trio.current_time())
            with trio.fail_after(30):
                while len(worker.links.outbox.frames) < len(datagrams):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    trio.run(main)
    return [parse_message(unpack(frame).data) for frame in worker.links.outbox.frames]


def open_worker(store):
    app = Application("open registrar")

    @app.request("REGISTER")
    def without_digest(call):
        return call.register()

    worker = _worker("worker-r", app)
    # What the runtime builds over etcd when it starts (nodes.worker.wiring).
    worker.registrations = Registrations(store, DEFAULT_POLICY, stats=worker.stats, tracing=None, bug=worker._bug)
    return worker


def test_a_registrar_bug_is_answered_500_and_the_worker_goes_on():
    worker = open_worker(BrokenStore())
    answers = run(worker, register(1), register(2))
    assert [a.status for a in answers] == [500, 500]
    assert worker.stats["internal_error"] == 2


def test_huge_expiry_values_register_with_the_longest_interval_allowed():
    store = MemoryLocationStore()
    worker = open_worker(store)
    answers = run(worker, register(3, "Expires: " + "9" * 5000 + "\r\n"))
    assert [a.status for a in answers] == [200]
    assert worker.stats["internal_error"] == 0


MARKER = "etcd-secret-detail-4242 https://10.9.8.7:2379 user sipcluster"


class UnavailableStore(MemoryLocationStore):
    async def read(self, aor):
        from cluster.registrar import StoreUnavailable
        raise StoreUnavailable(f"read: unavailable: {MARKER}")


def test_a_store_outage_is_answered_503_without_the_dependency_error_text(caplog):
    worker = open_worker(UnavailableStore())
    with caplog.at_level("WARNING", logger="sipcluster.worker"):
        (answer,) = run(worker, register(4))
    assert answer.status == 503
    raw = unpack(worker.links.outbox.frames[0]).data.decode()
    assert MARKER not in raw and "10.9.8.7" not in raw
    assert 'Warning: 399 registrar "location service unavailable"' in raw
    # The detail goes to the node's log instead.
    assert any(MARKER in record.getMessage() for record in caplog.records)
