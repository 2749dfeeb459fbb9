"""WorkerNode.receive contains a bug met by one message: it is counted and
logged, and the link loop goes on with the next message."""

from __future__ import annotations

import cluster.tu.core as tu_core
import nodes.worker.node as node_module

from .test_cancel_without_context import _feed, _request, _worker


def test_a_bug_in_one_message_does_not_escape_receive(monkeypatch):
    worker = _worker("worker-s")
    real = node_module.parse_complete

    def parse(data, **kw):
        if b"boom" in data:
            raise RuntimeError("a parser bug")
        return real(data, **kw)

    monkeypatch.setattr(node_module, "parse_complete", parse)
    _feed(worker, _request("OPTIONS", uri="sip:boom@localhost"))
    assert worker.stats["internal_error"] == 1
    assert worker.links.outbox.frames == []
    _feed(worker, _request("OPTIONS", branch="z9hG4bK-next"))  # to the callee's address
    forwarded = [m for m in worker.links.outbox.messages() if getattr(m, "method", "") == "OPTIONS"]
    assert len(forwarded) == 1, "the next message is handled as usual"


def test_a_bug_before_the_transaction_layer_is_contained(monkeypatch):
    worker = _worker("worker-s")

    def broken(request, peer):
        raise RuntimeError("a bug noting the source")

    monkeypatch.setattr(tu_core, "note_source", broken)
    _feed(worker, _request("OPTIONS"))
    assert worker.stats["internal_error"] == 1
    answers = [m.status for m in worker.links.outbox.messages() if not hasattr(m, "method")]
    assert answers == [500], "the caller is answered, not left retransmitting into the bug"
