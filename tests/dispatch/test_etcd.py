"""Destination sets through a real etcd: ``sipcluster dispatcher`` writes
them, every worker's feed reads them and the health a prober publishes."""

from __future__ import annotations

import json
from collections import Counter
import uuid

import trio

from cluster import cli
from cluster.coordination import EtcdStore
from cluster.coordination.connection import EtcdAccess
from cluster.dispatch import Dispatcher, HealthRecord, encode_health, health_key
from cluster.dispatch.directory import DispatcherDirectory
from nodes.worker.dispatch import DispatchFeed


def run_cli(capsys, etcd_server, prefix, *args):
    code = cli.main(["dispatcher", *args, "--etcd", etcd_server.endpoint, "--prefix", prefix])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_adds_lists_and_removes_members_with_their_health(etcd_server, capsys):
    prefix = f"/t-{uuid.uuid4().hex[:8]}"
    assert run_cli(capsys, etcd_server, prefix, "add", "carriers", "sip:gw1.example.net:5060",
                   "--priority", "1", "--policy", "hash")[0] == 0
    assert run_cli(capsys, etcd_server, prefix, "add", "carriers", "sip:gw2.example.net", "--weight", "5")[0] == 0
    etcd_server.client().put(health_key(prefix, "carriers", "sip:gw1.example.net:5060"),
                             encode_health(HealthRecord(False, None, 1.0, "worker-9")))
    code, out, _ = run_cli(capsys, etcd_server, prefix, "list", "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["set"] == "carriers" and listed["policy"] == "hash", "the first add made it hash"
    assert [(m["uri"], m["priority"], m["weight"], m["health"], m["probed_by"]) for m in listed["members"]] == [
        ("sip:gw1.example.net:5060", 1, 1, "down", "worker-9"),
        ("sip:gw2.example.net", 0, 5, "unknown", None)]
    code, out, _ = run_cli(capsys, etcd_server, prefix, "list")
    assert "sip:gw1.example.net:5060  priority=1  weight=1  down  last=timeout" in out
    # Bad input: a clear refusal, nothing written.
    code, _, err = run_cli(capsys, etcd_server, prefix, "add", "carriers", "tel:+123")
    assert code == 1 and "not a sip: or sips: URI" in err
    code, _, err = run_cli(capsys, etcd_server, prefix, "remove", "carriers", "sip:gw9.example.net")
    assert code == 1 and "no member sip:gw9.example.net in set carriers" in err
    assert run_cli(capsys, etcd_server, prefix, "remove", "carriers", "sip:gw1.example.net:5060")[0] == 0
    assert etcd_server.client().get(health_key(prefix, "carriers", "sip:gw1.example.net:5060"))[0] is None, \
        "a removed member's health goes with it"
    assert run_cli(capsys, etcd_server, prefix, "remove", "carriers")[0] == 0
    assert json.loads(run_cli(capsys, etcd_server, prefix, "list", "--json")[1]) == []


def test_every_feed_follows_sets_and_health(etcd_server):
    prefix = f"/t-{uuid.uuid4().hex[:8]}"
    directory = DispatcherDirectory(EtcdAccess((etcd_server.endpoint,)), prefix)
    directory.add("carriers", "sip:gw1.example.net", policy="priority")
    dispatcher = Dispatcher()

    async def main():
        store = EtcdStore(etcd_server.endpoint)
        async with trio.open_nursery() as nursery:
            await nursery.start(DispatchFeed(store, prefix, dispatcher, stats := Counter()).run)
            assert [m.uri for m in dispatcher.choose("carriers", "c")] == ["sip:gw1.example.net"]
            await trio.to_thread.run_sync(lambda: directory.add("carriers", "sip:gw0.example.net", priority=0))
            await trio.to_thread.run_sync(lambda: directory.add("carriers", "sip:gw1.example.net", priority=3))
            with trio.fail_after(30):
                while [m.uri for m in dispatcher.choose("carriers", "c")][0] != "sip:gw0.example.net":
                    await trio.sleep(0.05)
            await store.put(health_key(prefix, "carriers", "sip:gw0.example.net"),
                            encode_health(HealthRecord(False)))
            await store.put(f"{prefix}/dispatcher/sets/broken", b"{not json")
            with trio.fail_after(30):
                while [m.uri for m in dispatcher.choose("carriers", "c")] != ["sip:gw1.example.net"]:
                    await trio.sleep(0.05)
                while not stats.get("dispatch_bad_set"):
                    await trio.sleep(0.05)
            assert dispatcher.choose("broken", "c") is None
            await trio.to_thread.run_sync(lambda: directory.remove("carriers"))
            with trio.fail_after(30):
                while dispatcher.choose("carriers", "c") is not None:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        store.close()

    try:
        trio.run(main)
    finally:
        directory.close()
