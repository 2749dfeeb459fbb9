"""A drill's table (Markdown, printed and written as ``table.md``) and its
picture (``drill.png``: calls/s, failures and established calls over time,
the fault marked)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .measure import Outcome, Series, Target

__all__ = ["plot", "table", "verdicts"]


def verdicts(outcome: Outcome, targets: Sequence[Target]) -> list[tuple[str, bool, str]]:
    return [(t.name, t.check(outcome), t.shows(outcome)) for t in targets]


def table(name: str, fault: str, outcome: Outcome, targets: Sequence[Target], *,
          setup: str = "") -> str:
    rows = [
        f"### Drill `{name}`: {fault}",
        "",
        *([setup, ""] if setup else []),
        "| calls | failed before the fault | established at the fault | established calls lost "
        "| new calls failed | registrations lost | re-registrations failed | time to recover |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {outcome.calls} | {outcome.failed_before_fault} | {outcome.established_at_fault} "
        f"| {outcome.established_lost} "
        f"| {outcome.new_failed} | {outcome.registrations_lost} of {outcome.registrations} "
        f"| {outcome.refreshes_failed} | {outcome.time_to_recover:.1f} s |",
        "",
        "Why the caller and callee aborted calls from the fault on: " + (", ".join(f"{n} x {kind}" for kind, n in
                                                          outcome.failures_seen.items()) or "none") + ".",
        "",
        "| target | result | measured |",
        "|---|---|---|",
    ]
    for target, ok, shows in verdicts(outcome, targets):
        rows.append(f"| {target} | {'PASS' if ok else 'FAIL'} | {shows} |")
    return "\n".join(rows) + "\n"


def plot(path: Path, title: str, data: Series, fault_at: float | None,
         fault_end: float | None = None) -> Path:
    """Write the picture; ``fault_at``/``fault_end`` in the series' seconds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, rate_axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    rate_axis.step(data.t, data.started, where="post", label="calls started /s", color="tab:blue")
    rate_axis.bar(data.t, data.failures, width=0.9, align="edge", label="failures /s", color="tab:red")
    rate_axis.set_xlabel("seconds")
    rate_axis.set_ylabel("per second")
    held = rate_axis.twinx()
    held.plot(data.t, data.established, label="established calls", color="tab:green")
    held.set_ylabel("established calls")
    if fault_at is not None:
        rate_axis.axvline(fault_at, color="black", linestyle="--", label="fault")
        if fault_end is not None and fault_end - fault_at >= 0.5:
            rate_axis.axvspan(fault_at, fault_end, color="grey", alpha=0.2, label="fault lasts")
    lines, labels = rate_axis.get_legend_handles_labels()
    more_lines, more_labels = held.get_legend_handles_labels()
    rate_axis.legend(lines + more_lines, labels + more_labels, loc="upper left", fontsize="small")
    rate_axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
