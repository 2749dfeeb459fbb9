"""Binding records and the read-decide-write loop over MemoryLocationStore."""

from __future__ import annotations

import json

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.registrar import (
    Binding, MemoryLocationStore, Outcome, RegistrarPolicy, Source, StoreUnavailable, register,
)
from cluster.registrar.binding import contact_key
from cluster.sip.uri import parse_uri

from .samples import register_request

NOW = 5_000.0
AOR = "sip:alice@example.com"


# -- Binding records ------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    user=st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
    expires_at=st.floats(0, 4e9, allow_nan=False),
    call_id=_text.filter(bool), cseq=st.integers(0, 2**32 - 1),
    q=st.none() | st.floats(0, 1), instance=st.none() | _text, reg_id=st.none() | st.integers(1, 2**31),
    path=st.lists(_text, max_size=3).map(tuple),
    source=st.none() | st.builds(Source, st.sampled_from(["UDP", "TCP", "WSS"]), _text, st.integers(0, 65535)),
    edge=st.none() | _text, conn=st.none() | st.integers(0, 2**62), user_agent=st.none() | _text,
)
def test_record_round_trips_through_msgpack_and_json(user, expires_at, call_id, cseq, q, instance, reg_id,
                                                     path, source, edge, conn, user_agent):
    binding = Binding(aor=AOR, contact=f"sip:{user}@10.0.0.1;transport=tcp", expires_at=expires_at,
                      call_id=call_id, cseq=cseq, q=q, instance=instance, reg_id=reg_id, path=path,
                      source=source, edge=edge, conn=conn, user_agent=user_agent, registered_at=1.5)
    for data in (msgpack.unpackb(msgpack.packb(binding.to_record())),
                 json.loads(json.dumps(binding.to_record()))):
        back = Binding.from_record(data)
        assert back == binding
        assert back.binding_id == binding.binding_id


@pytest.mark.parametrize("record", [
    {}, {"v": 99}, {"v": 1, "aor": AOR}, {"v": 1, "id": "x", "aor": 5, "contact": "sip:a@b",
                                         "expires_at": 1, "call_id": "c", "cseq": 1},
])
def test_unreadable_records_raise_value_error(record):
    with pytest.raises(ValueError):
        Binding.from_record(record)


def test_contact_key_follows_uri_equality():
    assert contact_key(parse_uri("sip:A%6Cice@EXAMPLE.com;Transport=TCP")) == \
        contact_key(parse_uri("sip:Alice@example.com;transport=tcp"))
    assert contact_key(parse_uri("sip:alice@example.com")) != contact_key(parse_uri("sip:ALICE@example.com"))
    assert contact_key(parse_uri("tel:+1-201-555-0123")) == "tel:+1-201-555-0123"


def test_remaining_seconds():
    binding = Binding(aor=AOR, contact="sip:a@h", expires_at=1000.1 + 3600, call_id="c", cseq=1)
    assert binding.remaining(1000.1) == 3600
    assert binding.remaining(1000.7) == 3599
    assert binding.remaining(99999.0) == 0


# -- register() over the in-memory store ---------------------------------------------


def test_register_writes_then_query_reads_back():
    async def main():
        store = MemoryLocationStore()
        first = await register(store, register_request(["<sip:a@10.0.0.1>"]), now=NOW)
        second = await register(store, register_request(["<sip:b@10.0.0.2>;q=0.3"], call_id="other"),
                                now=NOW + 100)
        query = await register(store, register_request([], call_id="q"), now=NOW + 200)
        return store, first, second, query

    store, first, second, query = trio.run(main)
    assert (first.status, second.status, query.status) == (200, 200, 200)
    assert [v for n, v in query.headers if n == "Contact"] == [
        "<sip:a@10.0.0.1>;expires=3400", "<sip:b@10.0.0.2>;expires=3500;q=0.3"]
    assert trio.run(store.all_aors) == [AOR]
    assert store.expire(NOW + 3650) == 1
    assert [b.contact for b in trio.run(lambda: store.bindings(AOR, now=NOW + 3650))] == ["sip:b@10.0.0.2"]


def test_remove_all_empties_the_aor():
    async def main():
        store = MemoryLocationStore()
        await register(store, register_request(["<sip:a@10.0.0.1>", "<sip:b@10.0.0.2>"]), now=NOW)
        result = await register(store, register_request(["*"], expires=0, cseq=2), now=NOW + 1)
        return store, result

    store, result = trio.run(main)
    assert result.status == 200 and len(result.deletes) == 2
    assert trio.run(store.all_aors) == []


class _RacingStore(MemoryLocationStore):
    """Lets another registrar write the AOR between our read and our write,
    ``races`` times."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.reads = 0

    async def read(self, aor):
        state = await super().read(aor)
        self.reads += 1
        if self.races:
            self.races -= 1
            rival = Binding(aor=aor, contact=f"sip:rival{self.races}@10.9.9.9", expires_at=NOW + 600,
                            call_id=f"rival{self.races}", cseq=1)
            await super().apply(aor, [rival], [], expect=None)
        return state


def test_conflict_rereads_and_keeps_both_writes():
    store = _RacingStore(races=2)
    result = trio.run(lambda: register(store, register_request(["<sip:a@10.0.0.1>"]), now=NOW))
    assert result.status == 200
    assert (store.reads, store.conflicts) == (3, 2)
    listed = sorted(v for n, v in result.headers if n == "Contact")
    assert listed == ["<sip:a@10.0.0.1>;expires=3600", "<sip:rival0@10.9.9.9>;expires=600",
                      "<sip:rival1@10.9.9.9>;expires=600"]
    assert len(trio.run(lambda: store.bindings(AOR, now=NOW))) == 3


def test_conflicts_exhausted_is_500_with_retry_after():
    store = _RacingStore(races=10)
    result = trio.run(lambda: register(store, register_request(["<sip:a@10.0.0.1>"]), now=NOW,
                                       attempts=3, policy=RegistrarPolicy(retry_after=7)))
    assert (result.status, result.outcome) == (500, Outcome.CONFLICT)
    assert ("Retry-After", "7") in result.headers
    assert store.reads == 3


def test_store_unavailable_is_503():
    class Down(MemoryLocationStore):
        async def read(self, aor):
            raise StoreUnavailable("etcd unreachable")

    result = trio.run(lambda: register(Down(), register_request(["<sip:a@10.0.0.1>"]), now=NOW))
    assert (result.status, result.reason, result.outcome) == (503, "Service Unavailable",
                                                              Outcome.STORE_UNAVAILABLE)
    assert ("Retry-After", "5") in result.headers


def test_failed_request_never_touches_the_store():
    class NoWrites(MemoryLocationStore):
        async def apply(self, *a, **kw):
            raise AssertionError("no write expected")

    store = NoWrites()
    assert trio.run(lambda: register(store, register_request(["<sip:a@h>;expires=5"]), now=NOW)).status == 423
