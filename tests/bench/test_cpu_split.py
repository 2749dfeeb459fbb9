"""The parsing and reporting of ops/bench/cpu_split.py, ops/bench/procs.py and
compare.py's per-process rows, on recorded inputs (/proc lines, strace -c
summaries, edge counters): no cluster is started here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "ops" / "bench"
sys.path.insert(0, str(BENCH))

import compare  # noqa: E402 - the benchmarks are scripts in ops/bench
import cpu_split  # noqa: E402
import procs  # noqa: E402
from procs import Reading  # noqa: E402

RECORDED = Path(__file__).resolve().parent / "recorded"


@pytest.mark.parametrize(("cmdline", "expected"), [
    (b"/work/.venv/bin/python\0-m\0cluster.cli\0node\0--config\0/tmp/up/worker-2.toml\0", "worker-2"),
    (b"/work/.venv/bin/python\0-m\0cluster.cli\0node\0--config\0/tmp/up/edge-1.toml\0", "edge-1"),
    (b"/work/.venv/bin/python\0-m\0cluster.cli\0up\0--workers\0002\0", "supervisor"),
    (b"/usr/bin/etcd\0--data-dir\0/tmp/x\0", "etcd"),
    (b"kamailio\0-f\0proxy.cfg\0-DD\0", "kamailio"),
    (b"", "?"),
])
def test_role_names_each_process(cmdline, expected):
    assert procs.role(cmdline) == expected


def test_stat_and_switches_parse_recorded_proc_text():
    # A command name with a space and a bracket: fields count after the last ")".
    stat = ("4242 (py thon) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 "
            f"{3 * procs.HZ} {procs.HZ // 2} 0 0 20 0 3 0 100 0 0")
    assert procs.parse_stat(stat) == (pytest.approx(3.5), pytest.approx(0.5))
    status = "Name:\tpython\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n"
    assert procs.parse_switches(status) == 120, "preemptions are not wake-ups"


def test_split_subtracts_and_counts_a_new_process_from_zero():
    before = {"edge-1": Reading(10.0, 1000), "worker-1": Reading(20.0, 500)}
    after = {"edge-1": Reading(10.6, 1300), "worker-1": Reading(21.5, 800), "sipp caller": Reading(0.2, 90)}
    used = procs.split_cpu(before, after)
    assert used["edge-1"] == Reading(pytest.approx(0.6), 300)
    assert used["sipp caller"] == Reading(0.2, 90)
    s = cpu_split.split("Cluster 1e+1w", 300, before, after, calls=1000, seconds=10.0)
    assert s.ms_per_call["worker-1"] == pytest.approx(1.5)
    assert s.wakeups_per_call["edge-1"] == pytest.approx(0.3)
    assert s.proxy_ms == pytest.approx(2.1), "SIPp is not the system under test"


def test_render_prints_every_role_and_the_ratio_to_kamailio_at_the_same_rate():
    kam = cpu_split.Split("Kamailio TLSF", 300, 3000, 10.0, {"kamailio": 0.3, "sipp caller": 0.1},
                          {"kamailio": 2.0, "sipp caller": 3.0}, 0)
    cluster = cpu_split.Split("Cluster 1e+2w", 300, 2990, 10.0,
                              {"edge-1": 0.6, "worker-1": 0.9, "worker-2": 0.9, "etcd": 0.0},
                              {"edge-1": 7.2, "worker-1": 5.1, "worker-2": 5.0, "etcd": 0.8}, 10)
    alone = cpu_split.Split("Cluster 1e+2w", 100, 1000, 10.0, {"edge-1": 1.0}, {"edge-1": 1.0}, 0)
    table = cpu_split.render([kam, cluster, alone])
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[3:8] == ["edge-1", "etcd", "kamailio", "worker-1", "worker-2"]
    assert header[8] == "sipp caller"
    row = [c.strip() for c in lines[3].strip("|").split("|")]
    assert row[:3] == ["Cluster 1e+2w", "300", "2,990 (10)"]
    assert row[3] == "0.600 (7.2)" and row[-3] == "2.400" and row[-1] == "8.0×"
    assert lines[4].rstrip().endswith("| 1.000 | 0 % | — |"), "no Kamailio figure at 100 calls/s: no ratio"


def test_strace_summary_parses_the_recorded_run():
    total, counts = cpu_split.parse_strace_summary((RECORDED / "strace-worker.txt").read_text())
    assert total == 29885
    assert counts["futex"] == 5795 and counts["getpid"] == 7316 and counts["epoll_ctl"] == 2201
    assert counts["recvmsg"] == 80, "a line with an errors column"
    assert "total" not in counts and len(counts) == 13
    assert cpu_split.parse_strace_summary("") == (0, {})


def test_call_figures_split_edge_per_message_and_workers_per_call():
    used = {"edge-1": Reading(0.7, 0), "worker-1": Reading(1.0, 0), "worker-2": Reading(0.8, 0),
            "etcd": Reading(0.1, 0)}
    before = {"forwarded": 100, "forwarded_frames": 50, "sent_udp": 90, "drop_banned": 3}
    after = {"forwarded": 70_100, "forwarded_frames": 9_000, "sent_udp": 70_090, "sent_tcp": 0, "drop_banned": 9}
    messages = procs.edge_messages(before, after)
    assert messages == 140_000, "forwarded + sent; frames and drops are not messages"
    figures = procs.call_figures(used, calls=10_000, edge_msgs=messages)
    assert figures["cpu"] == pytest.approx(0.26)
    assert figures["workers_us"] == pytest.approx(180.0)
    assert figures["etcd_us"] == pytest.approx(10.0)
    assert figures["edge_us"] == pytest.approx(5.0)
    kam = procs.call_figures({"kamailio": Reading(0.5, 0)}, calls=10_000, edge_msgs=None)
    assert kam == {"cpu": pytest.approx(0.05)}
    assert procs.call_figures(used, calls=0, edge_msgs=messages) == {}


def test_compare_table_has_the_per_process_rows_and_the_edge_target(tmp_path):
    bench = compare.Bench(compare.QUICK, tmp_path, "0", "1", "0-1", True)
    bench.results.update({("Cluster 1e+1w", "edge_us"): 4.2, ("Cluster 1e+1w", "workers_us"): 640.0,
                          ("Cluster 1e+1w", "etcd_us"): 12.0, ("Cluster 1e+1w", "cpu"): 1.1,
                          ("Kamailio TLSF", "cpu"): 0.1})
    table = compare.render(bench, [])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ")}
    one = compare.COLUMNS.index("Cluster 1e+1w") + 1
    edge = next(cells for title, cells in rows.items() if title.startswith("Edge µs CPU per message"))
    assert edge[one] == "4.2" and edge[-1] == "≤ 5 µs live (issue 21): met"
    workers = next(cells for title, cells in rows.items() if title.startswith("Workers' µs CPU per call"))
    assert workers[one] == "640"
    etcd = next(cells for title, cells in rows.items() if title.startswith("etcd µs CPU per call"))
    assert etcd[one] == "12" and etcd[1] == "—"
