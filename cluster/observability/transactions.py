"""Counting transactions, calls and dialogs from the transaction layer's actions.

``TransactionCounts`` is the ``TransactionObserver`` the worker builds its
``TransactionLayer`` with: it looks at every action list the layer returns;
the sans-IO layer itself stays free of metrics. Counting happens when an outcome is known, not when a transaction
is forgotten (a UDP non-INVITE server transaction lingers 64·T1 = 32 s in
Completed, RFC 3261 §17.2.2; a metric that late is no use on a dashboard):

- a server transaction's outcome is the class of the first final response
  it sends (retransmissions are flagged by the layer and skipped);
- a client transaction's outcome is the class of the first final response
  it receives (an INVITE's retransmitted 2xx reach the TU again,
  RFC 6026 §7.2, and are counted once), or ``timeout`` (Timer B/F) or
  ``transport_error`` when none came;
- a call starts with an initial INVITE (no To tag, §12.1) and is answered
  (2xx) or failed (≥ 300, by code) by the final response to it;
- a dialog is counted from the 2xx to an initial INVITE until the final
  response to a BYE of the same Call-ID. The worker keeps no dialog state
  for proxied calls, so this is an estimate: a BYE that reaches another
  shard (the ring changed) leaves the entry until ``DIALOG_MAX_AGE``.
"""

from __future__ import annotations

from collections import Counter

from cluster.sip import Response
from cluster.sip.transaction.actions import (
    CancelReceived, RequestReceived, ResponseReceived, Send, TransactionTerminated,
    TransactionTimeout, TransportError,
)

__all__ = ["DIALOG_MAX_AGE", "TransactionCounts", "transaction_type"]

#: Seconds a dialog entry is kept without its BYE (a lost or re-routed BYE).
DIALOG_MAX_AGE = 4 * 3600.0
#: Most dialog entries kept; beyond it the oldest are dropped.
DIALOG_MAX_ENTRIES = 200_000


def transaction_type(key: tuple) -> str:
    """``client_invite``, ``client_non_invite``, ``server_invite`` or ``server_non_invite``."""
    kind = key[0]
    if kind == "c":
        return "client_invite" if key[2] == "INVITE" else "client_non_invite"
    method = key[4] if len(key) > 4 else ""
    return "server_invite" if method == "INVITE" else "server_non_invite"


def _class(status: int) -> str:
    return f"{status // 100}xx"


class TransactionCounts:
    """Counters of one transaction layer, read by the metrics at scrape time
    (a ``cluster.sip.transaction.TransactionObserver``)."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        """Transactions created, by type."""
        self.outcomes: Counter[tuple[str, str]] = Counter()
        """(type, outcome) → transactions; outcome is 2xx..6xx, timeout or transport_error."""
        self.timeouts: Counter[str] = Counter()
        """Timer name → firings that gave up (B, F, H, C)."""
        self.calls_started = 0
        self.calls_answered = 0
        self.calls_failed: Counter[int] = Counter()
        self.dialogs: dict[str, float] = {}
        """Call-ID → when its dialog was confirmed (trio clock)."""
        self._final: set[tuple] = set()
        self._initial_invites: set[tuple] = set()

    # -- TransactionObserver -------------------------------------------------------

    def client_started(self, key: tuple) -> None:
        self.started[transaction_type(key)] += 1

    def actions(self, actions: list, now: float) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                if action.retransmission or action.key is None:
                    continue
                message = action.message
                if type(message) is Response and message.status >= 200 and action.key[0] != "c":
                    self._server_final(action.key, message, now)
            elif kind is RequestReceived:
                key = action.key
                ttype = transaction_type(key)
                self.started[ttype] += 1
                if ttype == "server_invite" and action.request.to.tag is None:
                    self.calls_started += 1
                    self._initial_invites.add(key)
            elif kind is CancelReceived:
                self.started["server_non_invite"] += 1
            elif kind is ResponseReceived:
                if action.response.status >= 200:
                    self._client_final(action.key, _class(action.response.status))
            elif kind is TransactionTimeout:
                self.timeouts[action.timer] += 1
                if action.timer in ("B", "F"):
                    self._client_final(action.key, "timeout")
            elif kind is TransportError:
                if action.key[0] == "c":
                    self._client_final(action.key, "transport_error")
            elif kind is TransactionTerminated:
                self._final.discard(action.key)
                self._initial_invites.discard(action.key)

    # -- counting ------------------------------------------------------------------------

    def _client_final(self, key: tuple, outcome: str) -> None:
        if key in self._final:
            return
        ttype = transaction_type(key)
        if ttype == "client_invite":
            self._final.add(key)  # RFC 6026 §7.2: more 2xx may follow
        self.outcomes[(ttype, outcome)] += 1

    def _server_final(self, key: tuple, response: Response, now: float) -> None:
        status = response.status
        ttype = transaction_type(key)
        self.outcomes[(ttype, _class(status))] += 1
        method = response.cseq.method
        if key in self._initial_invites:
            self._initial_invites.discard(key)
            if status < 300:
                self.calls_answered += 1
                self._dialog_confirmed(response.call_id, now)
            else:
                self.calls_failed[status] += 1
        elif method == "BYE":
            self.dialogs.pop(response.call_id, None)

    def _dialog_confirmed(self, call_id: str, now: float) -> None:
        dialogs = self.dialogs
        if len(dialogs) >= DIALOG_MAX_ENTRIES:
            # dicts keep insertion order: the first entries are the oldest.
            for stale in list(dialogs)[: len(dialogs) // 10 or 1]:
                del dialogs[stale]
        dialogs[call_id] = now

    def active_dialogs(self, now: float) -> int:
        """Dialogs confirmed and not ended, after dropping those older than ``DIALOG_MAX_AGE``."""
        dialogs = self.dialogs
        limit = now - DIALOG_MAX_AGE
        for call_id in [c for c, since in dialogs.items() if since < limit]:
            del dialogs[call_id]
        return len(dialogs)
