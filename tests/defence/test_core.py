"""The sans-IO edge defences with a hand clock: token buckets, bounded
tables, the scanner matcher, the edge's admission decision and the
password-guessing counter."""

from __future__ import annotations

import time

import pytest

from cluster.defence import (
    ADDRESS, USER, AuthFailures, Ban, BanTable, DROP_BANNED, DROP_RATE, DROP_SCANNER, EdgeGuard,
    LogBudget, ScannerMatcher, SourceRates, ban_key, decode_ban, encode_ban, parse_ban_key,
)
from cluster.defence.scanner import DEFAULT_BLOCKED_AGENTS, user_agent
from tests.sip.samples import OPTIONS


def _with_agent(agent: bytes, data: bytes = OPTIONS) -> bytes:
    return data.replace(b"\r\nCall-ID", b"\r\nUser-Agent: " + agent + b"\r\nCall-ID", 1)


class Events:
    def __init__(self) -> None:
        self.bans: list[tuple[str, float, float]] = []
        self.drops: list[tuple[str, str]] = []

    def banned(self, source, seconds, now):
        self.bans.append((source, seconds, now))

    def dropped(self, reason, source, data, now):
        self.drops.append((reason, source))


def _guard(rate=5.0, burst=10, *, exempt=(), sources=1000, bans=1000, agents=DEFAULT_BLOCKED_AGENTS):
    events = Events()
    guard = EdgeGuard(bans=BanTable(bans), rates=SourceRates(rate, burst, sources) if rate else None,
                      scanners=ScannerMatcher(agents), ban_time=60.0, exempt=exempt, events=events)
    return guard, events


# -- token buckets -------------------------------------------------------------------


def test_bucket_allows_the_burst_then_the_rate():
    rates = SourceRates(5.0, 10, 100)
    assert all(rates.take("192.0.2.1", 100.0) for _ in range(10))
    assert not rates.take("192.0.2.1", 100.0)
    # 0.2 s at 5/s is one token, exactly.
    assert rates.take("192.0.2.1", 100.2)
    assert not rates.take("192.0.2.1", 100.2)
    # Other sources have their own bucket.
    assert rates.take("192.0.2.2", 100.2)


def test_bucket_refills_to_the_burst_only():
    rates = SourceRates(5.0, 3, 100)
    for _ in range(3):
        rates.take("a", 0.0)
    assert [rates.take("a", 1000.0) for _ in range(4)] == [True, True, True, False]


def test_clock_stepped_back_gives_no_tokens():
    rates = SourceRates(1.0, 1, 10)
    assert rates.take("a", 100.0)
    assert not rates.take("a", 50.0)


def test_source_table_is_bounded_and_spares_active_sources():
    rates = SourceRates(0.001, 2, 3)
    for source in ("a", "b", "c"):
        rates.take(source, 0.0)
    # "a" (the oldest entry) keeps sending; "b" and "c" went quiet.
    assert rates.take("a", 5.0)
    assert not rates.take("a", 5.0)
    rates.take("d", 5.0)
    assert len(rates) == 3 and rates.evicted == 1
    # "a" kept its empty bucket (active within ACTIVE s); "b" was forgotten.
    assert not rates.take("a", 5.0)
    assert rates.take("b", 5.0) and rates.take("b", 5.0)


def test_when_every_source_is_active_the_oldest_goes_anyway():
    rates = SourceRates(1.0, 1, 4)
    for source in ("a", "b", "c", "d", "e"):
        rates.take(source, 0.0)
    assert len(rates) == 4 and rates.evicted == 1


def test_a_spoofed_flood_of_sources_stays_bounded():
    rates = SourceRates(1.0, 1, 1000)
    for i in range(100_000):
        rates.take(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i * 1e-5)
    assert len(rates) == 1000
    assert rates.evicted == 99_000


# -- bans ------------------------------------------------------------------------------


def test_ban_table_expires_and_is_bounded():
    table = BanTable(3)
    assert table.add("a", 10.0, 0.0)
    assert not table.add("z", 5.0, 5.0)  # already ended
    assert table.banned("a", 9.99)
    assert not table.banned("a", 10.0)
    assert "a" not in table  # removed when met expired
    for subject in ("b", "c", "d", "e"):
        table.add(subject, 100.0, 0.0)
    assert len(table) == 3 and table.evicted == 1
    assert not table.banned("b", 1.0) and table.banned("e", 1.0)


def test_ban_list_of_100000_costs_only_the_bound():
    table = BanTable(65536)
    start = time.perf_counter()
    for i in range(100_000):
        table.add(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1000.0, 0.0)
    assert len(table) == 65536
    assert table.evicted == 100_000 - 65536
    assert table.banned("10.1.134.159", 1.0)  # the last one written (99,999)
    assert not table.banned("10.0.0.0", 1.0)  # the first ones were pushed out
    assert time.perf_counter() - start < 10.0


def test_ban_records_round_trip_and_bad_ones_are_skipped():
    ban = Ban(ADDRESS, "192.0.2.7", 1234.5, "rate", "edge-1", "more than 5 requests/s")
    assert decode_ban(ADDRESS, "192.0.2.7", encode_ban(ban)) == ban
    for bad in (b"", b"{", b"[]", b'{"until": "soon"}', b'{"until": NaN}', b'{"reason": "x"}'):
        assert decode_ban(ADDRESS, "x", bad) is None
    key = ban_key("/sc", USER, "alice@example.com")
    assert key == "/sc/bans/user/alice@example.com"
    assert parse_ban_key("/sc", key.encode()) == (USER, "alice@example.com")
    assert parse_ban_key("/sc", "/sc/bans/other/x") is None
    assert parse_ban_key("/sc", "/sc/bans/addr/") is None
    assert parse_ban_key("/sc", "/sc/users/alice") is None
    with pytest.raises(ValueError):
        ban_key("/sc", "host", "x")


# -- scanners -------------------------------------------------------------------------


@pytest.mark.parametrize("agent", [b"friendly-scanner", b"sipvicious 0.3.4", b"sipcli/v1.8",
                                   b"VaxSIPUserAgent/3.1", b"pplsip", b"Friendly-Scanner"])
def test_scanner_user_agents_match(agent):
    assert ScannerMatcher(DEFAULT_BLOCKED_AGENTS).matches(_with_agent(agent))


def test_lower_case_header_name_matches_too():
    data = OPTIONS.replace(b"\r\nCall-ID", b"\r\nuser-agent:friendly-scanner\r\nCall-ID", 1)
    assert ScannerMatcher(DEFAULT_BLOCKED_AGENTS).matches(data)


@pytest.mark.parametrize("data", [
    OPTIONS,
    _with_agent(b"Linphone/5.2 (belle-sip/5.2)"),
    # A blocked word elsewhere than User-Agent, or in the body, is not a scanner.
    OPTIONS.replace(b"\r\nCall-ID", b"\r\nSubject: friendly-scanner\r\nCall-ID", 1),
    OPTIONS.replace(b"Content-Length: 0\r\n\r\n",
                    b"Content-Length: 41\r\n\r\nUser-Agent: friendly-scanner\r\nUser-Agent:x", 1),
    _with_agent(b"Linphone").replace(b"\r\n\r\n", b"\r\n\r\nx\nUser-Agent: sipvicious\r\n", 1),
])
def test_other_messages_do_not_match(data):
    assert not ScannerMatcher(DEFAULT_BLOCKED_AGENTS).matches(data)


def test_empty_block_list_turns_the_check_off():
    matcher = ScannerMatcher(())
    assert not matcher and not matcher.matches(_with_agent(b"friendly-scanner"))
    assert ScannerMatcher(("MyScanner",)).matches(_with_agent(b"xx myscanner yy"))


def test_user_agent_for_log_lines():
    assert user_agent(_with_agent(b"friendly-scanner")) == "friendly-scanner"
    assert user_agent(OPTIONS) == ""
    assert len(user_agent(_with_agent(b"x" * 500))) == 80


# -- the edge's decision ------------------------------------------------------------------


def test_a_source_above_the_rate_is_banned_then_dropped_until_the_ban_ends():
    guard, events = _guard(rate=5.0, burst=10)
    now = 1000.0
    verdicts = [guard.admit(OPTIONS, "192.0.2.66", now) for _ in range(1000)]
    assert verdicts[:10] == [None] * 10
    assert verdicts[10] == DROP_RATE
    assert set(verdicts[11:]) == {DROP_BANNED}
    assert events.bans == [("192.0.2.66", 60.0, now)]
    # A well-behaved source is untouched.
    assert guard.admit(OPTIONS, "192.0.2.1", now) is None
    # Responses from a banned source are dropped too, as pike does.
    assert guard.admit(b"SIP/2.0 200 OK\r\n\r\n", "192.0.2.66", now + 1) == DROP_BANNED
    assert guard.admit(OPTIONS, "192.0.2.66", now + 59.9) == DROP_BANNED
    # The ban ends; the bucket refilled meanwhile.
    assert guard.admit(OPTIONS, "192.0.2.66", now + 60.0) is None


def test_responses_are_not_rate_limited():
    guard, _ = _guard(rate=1.0, burst=1)
    assert {guard.admit(b"SIP/2.0 100 Trying\r\n\r\n", "192.0.2.5", 0.0) for _ in range(100)} == {None}


def test_exempt_networks_are_never_rate_banned():
    guard, events = _guard(rate=1.0, burst=2, exempt=("127.0.0.0/29", "2001:db8::/32"))
    for source in ("127.0.0.5", "2001:db8::1"):
        assert {guard.admit(OPTIONS, source, 0.0) for _ in range(100)} == {None}
    assert guard.admit(OPTIONS, "127.0.0.9", 0.0) is None
    assert guard.admit(OPTIONS, "127.0.0.9", 0.0) is None
    assert guard.admit(OPTIONS, "127.0.0.9", 0.0) == DROP_RATE
    assert [b[0] for b in events.bans] == ["127.0.0.9"]


def test_rate_limiting_off_never_bans():
    guard, events = _guard(rate=0)
    assert {guard.admit(OPTIONS, "192.0.2.9", 0.0) for _ in range(10_000)} == {None}
    assert events.bans == []


def test_scanner_dropped_without_ban_and_lifted_bans_start_afresh():
    guard, events = _guard(rate=1.0, burst=1)
    assert guard.admit(_with_agent(b"friendly-scanner"), "192.0.2.8", 0.0) == DROP_SCANNER
    assert events.drops == [(DROP_SCANNER, "192.0.2.8")]
    assert guard.admit(OPTIONS, "192.0.2.8", 0.0) is None  # the scanner drop took no token
    assert guard.admit(OPTIONS, "192.0.2.8", 0.0) == DROP_RATE
    guard.lift("192.0.2.8")
    assert guard.admit(OPTIONS, "192.0.2.8", 0.0) is None


def test_a_source_rotating_ports_is_one_source():
    # The guard keys by address: 65,536 source ports are one bucket and one ban.
    guard, events = _guard(rate=5.0, burst=10, sources=4)
    verdicts = [guard.admit(OPTIONS, "198.51.100.4", 0.0) for _port in range(65_536)]
    assert verdicts.count(None) == 10 and verdicts.count(DROP_RATE) == 1
    assert verdicts.count(DROP_BANNED) == 65_536 - 11
    assert len(guard.rates) == 1 and len(guard.bans) == 1 and len(events.bans) == 1


def test_log_budget_holds_back_and_reports_the_count():
    budget = LogBudget(lines=2, per=10.0)
    allowed = [budget.allow("ban", 0.0) for _ in range(5)]
    assert allowed == [0, 0, None, None, None]
    assert budget.allow("scanner", 1.0) == 0  # kinds have their own budget
    assert budget.allow("ban", 10.0) == 3


# -- password guessing -----------------------------------------------------------------


def test_failures_ban_address_and_user_once_at_the_threshold():
    failures = AuthFailures(limit=3, window=60.0, ban_time=600.0)
    assert failures.failed("alice@example.com", "192.0.2.1", 0.0) == []
    assert failures.failed("alice@example.com", "192.0.2.1", 1.0) == []
    assert failures.failed("alice@example.com", "192.0.2.1", 2.0) == [
        (ADDRESS, "192.0.2.1"), (USER, "alice@example.com")]
    assert failures.failed("alice@example.com", "192.0.2.1", 3.0) == []


def test_failures_outside_the_window_start_a_new_count():
    failures = AuthFailures(limit=2, window=10.0, ban_time=600.0)
    assert failures.failed(None, "192.0.2.1", 0.0) == []
    assert failures.failed(None, "192.0.2.1", 10.0) == []
    assert failures.failed(None, "192.0.2.1", 11.0) == [(ADDRESS, "192.0.2.1")]


def test_each_worker_bans_at_its_share_so_the_cluster_bans_within_the_limit():
    # limit 10 over 3 workers: each bans at ceil(10/3) = 4 of its own. However
    # 10 attempts spread over 3 workers, one of them sees at least 4.
    workers = [AuthFailures(limit=10, window=60.0, ban_time=600.0) for _ in range(3)]
    for worker in workers:
        worker.workers = 3
    assert workers[0].threshold == 4
    banned = []
    for attempt in range(10):
        banned += workers[attempt % 3].failed("bob@example.com", "192.0.2.2", float(attempt))
    assert (ADDRESS, "192.0.2.2") in banned and (USER, "bob@example.com") in banned


def test_failure_tables_are_bounded_and_off_at_zero():
    failures = AuthFailures(limit=5, window=60.0, ban_time=60.0, capacity=100)
    for i in range(10_000):
        failures.failed(f"u{i}@x", f"10.0.{i >> 8 & 255}.{i & 255}", 0.0)
    assert len(failures._counts) <= 100
    assert AuthFailures(limit=0, window=1.0, ban_time=1.0).failed("a@b", "c", 0.0) == []


def test_an_attack_costs_a_few_log_lines(caplog):
    from collections import Counter

    from cluster.config import EdgeConfig
    from nodes.edge.defence import EdgeDefenceEvents, build_guard

    stats = Counter()
    events = EdgeDefenceEvents("edge-1", stats, 5.0, None)
    guard = build_guard(EdgeConfig(rate_limit=5.0, rate_burst=10, user_agent_block=("friendly-scanner",)), events)
    with caplog.at_level("INFO", logger="sipcluster.edge"):
        for i in range(1000):
            guard.admit(OPTIONS, "192.0.2.66", 100.0 + i * 0.001)
            guard.admit(_with_agent(b"friendly-scanner"), "192.0.2.20", 100.0 + i * 0.001)
    assert stats["ban_rate"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("source banned: request rate above edge.rate_limit") == 1
    # Per kind at most five lines per 10 s: banned, rate_limited, scanner drops.
    assert 3 <= messages.count("message dropped by the edge defences") <= 15
    dropped = [r for r in caplog.records if r.getMessage() == "message dropped by the edge defences"]
    assert {r.reason for r in dropped} == {"banned", "rate_limited", "scanner"}
    assert any(r.user_agent == "friendly-scanner" for r in dropped)
