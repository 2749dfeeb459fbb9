"""What a drill measured, computed from what the SIPp agents logged (no I/O).

The caller logs one line per step of each call (``drill_uac.xml``):
``S`` started (INVITE sent), ``A`` answered, ``R`` re-INVITE answered, ``E``
ended (BYE answered 200), each with SIPp's clock in ms and the Call-ID. From
these and the moment of the fault follow the table's figures:

- established calls lost: answered *before the fault* and never ended
  (their re-INVITE or BYE failed: the far end's call stays up, or the
  dialog's route is gone);
- new calls failed: every other call that failed, i.e. one not yet
  established when the fault came: never answered, or answered after the
  fault and then lost its re-INVITE or BYE. The worker-loss target allows
  them only within the first second after the fault (their failing request
  sent by then);
- failed before the fault: any of these whose failing request went out
  before the fault (an INVITE: more than a second before), not counted
  against the fault;
- registrations lost: users registered before the run without a binding
  after it;
- time to recover: from the fault to the start of the last request that
  failed (a failed call's INVITE, or the re-INVITE or BYE an established
  call lost: one half-hold after its previous step).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["CallRecord", "Outcome", "Series", "Target", "abort_times", "failure_kinds", "failures_by_phase", "parse_call_log",
           "parse_register_log", "series", "summarize"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    started: float
    answered: float | None = None
    reinvited: float | None = None
    ended: float | None = None
    aborted: float | None = None     # when SIPp gave up on the call (its error log)


def parse_call_log(text: str, *, origin: float, aborted: Mapping[str, float] | None = None) -> list[CallRecord]:
    """Call records from a caller log; ``origin`` is the wall time of SIPp's
    clock zero, ``aborted`` the abort times by Call-ID (``abort_times``).
    Lines that are not ``<step> <ms> <call-id>`` are skipped."""
    aborted = aborted or {}
    steps: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] not in "SARE" or not parts[1].isdigit():
            continue
        steps.setdefault(parts[2], {})[parts[0]] = origin + int(parts[1]) / 1000
    return [CallRecord(call_id, s["S"], s.get("A"), s.get("R"), s.get("E"), aborted.get(call_id))
            for call_id, s in steps.items() if "S" in s]


_ABORTED_CALL = re.compile(r"(\d+\.\d+): Aborting call .*? for Call-I[dD][: ]*'([^']+)'")


def abort_times(error_log: str) -> dict[str, float]:
    """When SIPp aborted each call it gave up on, by Call-ID (-trace_err)."""
    return {m.group(2): float(m.group(1)) for m in _ABORTED_CALL.finditer(error_log)}


def parse_register_log(text: str, step: str = "G") -> list[str]:
    """Users whose REGISTER got its 200 (``G <ms> <user>`` lines), or with
    ``step="T"`` every REGISTER tried."""
    return [parts[2] for parts in (line.split() for line in text.splitlines())
            if len(parts) == 3 and parts[0] == step]


_RECEIVED = re.compile(r"received '(SIP/2\.0 (\d{3})|[A-Z]+ )")


_ABORTED_AT = re.compile(r"(\d+\.\d+): Aborting call")
_CONTINUED_AT = re.compile(r"(\d+\.\d+): Continuing call")


def failure_kinds(error_log: str, since: float | None = None) -> dict[str, int]:
    """Why SIPp aborted calls (its -trace_err log), one count per call: each unexpected
    final answer by status code, ``stray <code>`` for an unexpected
    provisional or 2xx answer (a duplicate: a request processed twice, or an
    answer from a shard that no longer owns the call), ``stray request``, and
    ``timeout`` for a request that was never answered. With ``since`` (a
    wall time), calls aborted before it are left out."""
    kinds: dict[str, int] = {}
    for line in error_log.splitlines():
        # One "Aborting call" line per call SIPp gave up on; the "Dead call"
        # lines after it are retransmissions reaching the aborted call. An
        # agent told not to abort on unexpected messages (the callee) logs
        # "Continuing call on unexpected message" instead: each counts as a
        # stray, except an ACK (the caller acknowledges every copy of a
        # retransmitted 2xx, RFC 3261 §13.2.2.4, so a late one is no duplicate).
        continuing = "Continuing call on unexpected message" in line
        if "Aborting call" not in line and not continuing:
            continue
        at = _ABORTED_AT.search(line) or _CONTINUED_AT.search(line)
        if since is not None and at is not None and float(at.group(1)) < since:
            continue
        kind = None
        if "timeout" in line and not continuing:
            kind = "timeout"
        elif (m := _RECEIVED.search(line)) is not None:
            code = m.group(2)
            if code is None and m.group(1) == "ACK " and continuing:
                continue
            kind = "stray request" if code is None else (f"stray {code}" if int(code) < 300 else code)
        if kind is not None:
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def strays(kinds: dict[str, int]) -> int:
    return sum(n for kind, n in kinds.items() if kind.startswith("stray"))


@dataclass(frozen=True, slots=True)
class Outcome:
    calls: int
    established_at_fault: int
    failed_before_fault: int      # calls whose failing request went out before the fault
    established_lost: int         # the rest count from the fault on: answered before it
    new_failed: int               # not established at the fault (answered after it, or never)
    new_failed_late: int          # new calls whose failing request went out more than 1 s after it
    registrations: int
    registrations_lost: int
    refreshes_failed: int
    stray_messages: int           # unexpected 1xx/2xx answers or requests (duplicates)
    stuck_calls: int              # calls the caller still held when it gave up
    time_to_recover: float        # seconds
    completed_ratio_after_fault: float
    failures_seen: dict[str, int] = field(default_factory=dict)   # failure_kinds of caller and callee

    @property
    def failed(self) -> int:
        return self.established_lost + self.new_failed


def _lost_request_time(call: CallRecord, half_hold: float) -> float:
    # An established call fails on its re-INVITE (sent half a hold after the
    # answer) or on its BYE (half a hold after the re-INVITE's answer).
    if call.reinvited is not None:
        return call.reinvited + half_hold
    assert call.answered is not None
    return call.answered + half_hold


def failure_time(call: CallRecord, half_hold: float) -> float | None:
    """When the request that failed went out; a call SIPp aborted earlier
    than that (on a stray message) failed when it was aborted."""
    if call.ended is not None:
        return None
    sent = call.started if call.answered is None else _lost_request_time(call, half_hold)
    return sent if call.aborted is None else min(sent, call.aborted)


def summarize(calls: Sequence[CallRecord], *, fault_at: float, hold: float,
              registered: Iterable[str] = (), bound: Iterable[str] = (), refreshes: int = 0,
              refreshed: int = 0, failures_seen: dict[str, int] | None = None,
              stuck_calls: int = 0) -> Outcome:
    half = hold / 2
    registered_set, bound_set = set(registered), set(bound)
    # A call whose failing request went out before the fault (an INVITE up
    # to a second before it: in flight when it came) did not fail because of
    # it: counted apart, not against the fault's targets.
    before = [c for c in calls if c.ended is None
              and (failure_time(c, half) or 0.0) < (fault_at - 1 if c.answered is None else fault_at)]
    failed = [c for c in calls if c.ended is None and c not in before]
    # Issue 18 §5 counts against "established calls" only those the fault
    # found established; a call answered after it is a new call, whichever
    # of its requests failed.
    lost = [c for c in failed if c.answered is not None and c.answered <= fault_at]
    new_failed = [c for c in failed if c not in lost]
    late = [c for c in new_failed if (failure_time(c, half) or c.started) > fault_at + 1]
    failure_times = [t for c in calls if (t := failure_time(c, half)) is not None and t >= fault_at]
    after = [c for c in calls if c.started >= fault_at]
    return Outcome(
        calls=len(calls),
        # Answered, not yet ended, and not already failed (a call whose
        # re-INVITE or BYE failed before the fault was over by then).
        established_at_fault=sum(1 for c in calls if c.answered is not None and c.answered <= fault_at
                                 and (c.ended is None or c.ended > fault_at) and c not in before),
        failed_before_fault=len(before),
        established_lost=len(lost),
        new_failed=len(new_failed),
        new_failed_late=len(late),
        registrations=len(registered_set),
        registrations_lost=len(registered_set - bound_set),
        refreshes_failed=max(0, refreshes - refreshed),
        stray_messages=strays(failures_seen or {}),
        stuck_calls=stuck_calls,
        time_to_recover=max(failure_times) - fault_at if failure_times else 0.0,
        completed_ratio_after_fault=(sum(1 for c in after if c.ended is not None) / len(after)
                                     if after else 1.0),
        failures_seen=dict(sorted((failures_seen or {}).items())),
    )


def failures_by_phase(calls: Sequence[CallRecord], events: Sequence[tuple[float, str]], *,
                      fault_at: float, hold: float) -> dict[str, int]:
    """Failed requests counted by the last fault step before each (the fault
    itself is the first step), e.g. which node's restart of a rolling upgrade
    cost calls. Failures before the fault count as ``before the fault``."""
    steps = sorted([(fault_at, "fault"), *events])
    counts: dict[str, int] = {}
    for call in calls:
        failed = failure_time(call, hold / 2)
        if failed is None:
            continue
        phase = "before the fault"
        for when, what in steps:
            if when <= failed:
                phase = what
        counts[phase] = counts.get(phase, 0) + 1
    return counts


@dataclass(frozen=True, slots=True)
class Series:
    """Per-second counts for the picture; ``t`` in seconds from the first call."""

    t: list[float] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    established: list[int] = field(default_factory=list)


def series(calls: Sequence[CallRecord], *, hold: float, origin: float | None = None) -> Series:
    if not calls:
        return Series()
    start = min(c.started for c in calls) if origin is None else origin
    ends = [c.ended or failure_time(c, hold / 2) or c.started for c in calls]
    seconds = math.ceil(max(ends) - start) + 1
    out = Series(t=[float(i) for i in range(seconds)], started=[0] * seconds, failures=[0] * seconds,
                 established=[0] * seconds)
    for call, end in zip(calls, ends, strict=True):
        out.started[min(seconds - 1, max(0, int(call.started - start)))] += 1
        failed = failure_time(call, hold / 2)
        if failed is not None:
            out.failures[min(seconds - 1, max(0, int(failed - start)))] += 1
        if call.answered is not None:
            # Established from the answer until it ended (or its lost request).
            for i in range(max(0, math.ceil(call.answered - start)), min(seconds, int(end - start) + 1)):
                out.established[i] += 1
    return out


@dataclass(frozen=True, slots=True)
class Target:
    """One of issue 18's targets: a name, the check and the reason a failed
    check is expected, when the layer that misses it is known."""

    name: str
    check: Callable[[Outcome], bool]
    shows: Callable[[Outcome], str]
