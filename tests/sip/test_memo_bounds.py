"""The parse memo tables are bounded in bytes as well as entries (issue 19
part 3): distinct 30 KB header values are parsed but never kept."""

from __future__ import annotations

import tracemalloc

from cluster.proxy.routing import split_hostport
from cluster.sip import parse_complete, parse_uri
from cluster.sip import address, fields, headers, via
from cluster.sip.memo import BYTES, LIMIT, VALUE_LIMIT, MemoTable, remember


def test_remember_keeps_short_values_and_never_long_ones():
    table: MemoTable[int] = MemoTable()
    assert remember(table, "x" * VALUE_LIMIT, 1) == 1 and table.size == VALUE_LIMIT
    assert remember(table, "y" * (VALUE_LIMIT + 1), 2) == 2
    assert "y" * (VALUE_LIMIT + 1) not in table and len(table) == 1


def test_a_table_is_emptied_at_its_byte_budget_before_its_entry_limit():
    table: MemoTable[int] = MemoTable()
    for n in range(BYTES // VALUE_LIMIT + 5):
        remember(table, f"{n:08d}".ljust(VALUE_LIMIT, "z"), n)
        assert table.size <= BYTES
        assert table.size == sum(len(k) for k in table)
    assert len(table) < LIMIT


def options(n: int, size: int) -> bytes:
    big = f"a{n}".ljust(size, "b")
    return (f"OPTIONS sip:{big}@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{n};x={big}\r\n"
            f"Max-Forwards: 70\r\nTo: \"{big}\" <sip:{big}@example.com>\r\n"
            f"From: \"{big}\" <sip:{big}@example.com>;tag={n}\r\n"
            f"Call-ID: {n}@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def test_distinct_large_header_values_do_not_stay_in_memory():
    for n in range(50):  # warm the tables with small values
        assert parse_complete(options(n, 10)).from_.uri
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for n in range(600):
            message = parse_complete(options(n, 30_000))
            assert message.from_.uri and message.to.uri and message.via.branch
            parse_uri(f"sip:{n}".ljust(30_000, "c") + "@example.com")
            split_hostport(f"h{n}".ljust(30_000, "d"))
            del message
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 600 messages x 5 values x 30 KB = 90 MB parsed; well under 2 MB kept.
    assert kept - base < 2_000_000, kept - base
    for table in (via._MEMO, address._MEMO, fields._CSEQ_MEMO):
        assert all(len(key) <= VALUE_LIMIT for key in table)
    assert all(len(name) <= 64 for name in headers._KEY_CACHE)
