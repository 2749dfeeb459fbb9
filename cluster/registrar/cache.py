"""Worker-local read cache of the location service (DESIGN §6).

An INVITE for a local user needs the callee's bindings; asking etcd each
time would put an etcd round trip on every call. ``LocationCache`` keeps all
bindings in memory instead: a full read of ``/<prefix>/location/``, then an
etcd watch from just after that read's revision. ``lookup`` is a dict access
with no I/O.

Keeping it true:
- Each watch event is applied in revision order on the trio thread.
- A broken watch stream is re-opened from the last revision applied, so
  etcd replays exactly what was missed (no full read needed).
- A silent stream (half-open TCP, stuck proxy) is detected by asking etcd
  for a progress notification every ``progress_interval`` seconds; nothing
  heard for ``progress_interval + progress_timeout`` means the stream is
  dead, and it is re-opened as above.
- If etcd has compacted the history we would resume from, the cache does a
  full read (and every ``resync_interval`` seconds anyway, as a backstop
  against any missed event).

Staleness bound (defaults; measured on loopback by the tests):
- healthy watch: a change committed to etcd is applied within the watch's
  propagation time, typically 1-5 ms (tests require < 0.5 s);
- stream fails loudly (reset, etcd restart): detected at once, re-opened
  after ``retry_interval`` (0.5 s) from the last revision, and etcd replays
  everything missed;
- stream fails silently: detected after at most ``progress_interval +
  progress_timeout`` (1 s + 1 s) without an answer, then as above.
So while etcd is reachable a lookup is at most ``STALENESS_BOUND`` =
1 + 1 + 0.5 = 2.5 s behind etcd (plus one round trip for the replay), and
the full resync every ``resync_interval`` (60 s) bounds the damage of
anything a watch could still have missed. While etcd is unreachable the
cache keeps serving its last state; ``stale_for`` says for how long, so a
caller can decide to stop trusting it.

Expired bindings stay in etcd until their bucket lease ends; ``lookup``
hides them by comparing ``expires_at`` with ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from cluster.coordination.connection import EtcdAccess
from cluster.coordination.observer import EtcdObserver

from .binding import Binding
from .etcd_kv import EtcdKV, WatchStream
from .etcd_store import decode_binding, location_prefix, split_key
from .store import StoreUnavailable

__all__ = ["CacheCounters", "LocationCache", "STALENESS_BOUND"]

PROGRESS_INTERVAL = 1.0
PROGRESS_TIMEOUT = 1.0
RETRY_INTERVAL = 0.5
RESYNC_INTERVAL = 60.0
STALENESS_BOUND = PROGRESS_INTERVAL + PROGRESS_TIMEOUT + RETRY_INTERVAL

_PUT = 0  # mvccpb.Event.EventType.PUT; DELETE is 1


@dataclass(slots=True)
class CacheCounters:
    events: int = 0
    resyncs: int = 0
    """Full reads of the prefix (the first one included)."""
    rewatches: int = 0
    """Watch streams re-opened from the last revision after a failure."""
    compactions: int = 0
    silent: int = 0
    """Streams declared dead for answering no progress request."""
    bad_records: int = 0
    """Stored values this node could not decode (counted when first looked up)."""


def _order(binding: Binding) -> tuple[float, float]:
    # RFC 3261 §16.6: higher q first; a Contact without q counts as 1.0.
    # Among equals the most recently registered comes first.
    q = binding.q
    return (-(1.0 if q is None else q), -binding.registered_at)


class LocationCache:
    """All bindings under ``/<prefix>/location/``, kept current by a watch."""

    def __init__(
        self,
        etcd: EtcdKV | EtcdAccess | Callable[[], object] | Sequence[str],
        *,
        prefix: str = "sipcluster",
        resync_interval: float = RESYNC_INTERVAL,
        progress_interval: float = PROGRESS_INTERVAL,
        progress_timeout: float = PROGRESS_TIMEOUT,
        retry_interval: float = RETRY_INTERVAL,
        observer: EtcdObserver | None = None,
    ) -> None:
        self._kv = EtcdKV.of(etcd, observer)
        self.root = location_prefix(prefix)
        self.resync_interval = resync_interval
        self.progress_interval = progress_interval
        self.progress_timeout = progress_timeout
        self.retry_interval = retry_interval
        self.counters = CacheCounters()
        self.revision = 0
        """Every change up to this etcd revision has been applied."""
        self.last_error: str | None = None
        # Values are the stored bytes until a lookup first reads them, then
        # the decoded Binding: most bindings a worker follows are never
        # routed to by it (the call's Call-ID picks the shard, not the AOR),
        # and ~250 bytes of msgpack are a fraction of a Binding's objects.
        self._aors: dict[str, dict[str, Binding | bytes]] = {}
        self._last_heard = 0.0
        self._healthy_since: float | None = None
        self._broken_at: float | None = None
        self._advanced = trio.Event()
        self._stream: WatchStream | None = None
        # The watch thread lives as long as the stream; keep it off trio's
        # shared thread limit.
        self._limiter = trio.CapacityLimiter(1)

    # -- reads (no I/O) ----------------------------------------------------------------

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Unexpired bindings of ``aor``, highest q first."""
        bindings = self._aors.get(aor)
        if not bindings:
            return []
        live = []
        for bid, binding in list(bindings.items()):
            if isinstance(binding, bytes):
                try:
                    binding = bindings[bid] = decode_binding(binding)
                except ValueError:
                    # Unreadable (newer format?): as good as gone for routing.
                    self.counters.bad_records += 1
                    del bindings[bid]
                    continue
            if binding.expires_at > now:
                live.append(binding)
        if not bindings:
            del self._aors[aor]
        if len(live) > 1:
            live.sort(key=_order)
        return live

    def aors(self) -> list[str]:
        return sorted(self._aors)

    def __len__(self) -> int:
        """Number of bindings held (expired ones not yet deleted included)."""
        return sum(len(b) for b in self._aors.values())

    def stale_for(self, now: float) -> float:
        """Seconds since the watch stopped delivering (0 while healthy);
        ``now`` on the trio clock."""
        return 0.0 if self._broken_at is None else max(0.0, now - self._broken_at)

    async def wait_for_revision(self, revision: int) -> None:
        """Return once every change up to ``revision`` has been applied."""
        while self.revision < revision:
            await self._advanced.wait()

    def rewatch(self) -> None:
        """Drop the current watch stream; it is re-opened from ``revision``."""
        stream = self._stream
        if stream is not None:
            stream.cancel()

    def close(self) -> None:
        self._kv.close()

    # -- service ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load, then follow etcd until cancelled. Ready after the first full read."""
        started = False
        need_resync = True
        resync_at = 0.0
        while True:
            try:
                if need_resync:
                    await self._resync()
                    need_resync = False
                    resync_at = trio.current_time() + self.resync_interval
                elif started:
                    self.counters.rewatches += 1
                if not started:
                    task_status.started()
                    started = True
                need_resync = await self._follow(resync_at)
            except StoreUnavailable as exc:
                self.last_error = exc.reason
                if self._broken_at is None:
                    self._broken_at = trio.current_time()
                await trio.sleep(self.retry_interval)

    async def _resync(self) -> None:
        revision, aors = await trio.to_thread.run_sync(self._read_all, abandon_on_cancel=True)
        self._aors = aors
        self._broken_at = None
        self.counters.resyncs += 1
        self._advance(revision, force=True)

    def _read_all(self) -> tuple[int, dict[str, dict[str, Binding | bytes]]]:
        revision, kvs = self._kv.read_prefix(self.root)
        aors: dict[str, dict[str, Binding | bytes]] = {}
        root = self.root
        for key, value, _ in kvs:
            aor, bid = split_key(root, key)
            aors.setdefault(aor, {})[bid] = value
        return revision, aors

    async def _follow(self, resync_at: float) -> bool:
        """Apply watch events until the resync is due (True), history was
        compacted (True) or the stream failed (StoreUnavailable) or was
        dropped by ``rewatch`` (False)."""
        stream = self._stream = self._kv.watch(self.root, self.revision + 1)
        self._last_heard = trio.current_time()
        outcome: list[str | StoreUnavailable] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, stream, outcome, nursery.cancel_scope)
                nursery.start_soon(self._liveness, stream, outcome, nursery.cancel_scope)
                nursery.cancel_scope.deadline = resync_at
        finally:
            stream.cancel()
            self._stream = None
        if not outcome:
            return True  # the resync deadline ended the stream
        result = outcome[0]
        if isinstance(result, StoreUnavailable):
            raise result
        if result == "compacted":
            self.counters.compactions += 1
            return True
        return False

    async def _pump(self, stream: WatchStream, outcome: list[str | StoreUnavailable],
                    scope: trio.CancelScope) -> None:
        result: str | StoreUnavailable
        try:
            result = await trio.to_thread.run_sync(
                self._deliver, stream, abandon_on_cancel=True, limiter=self._limiter)
        except StoreUnavailable as exc:
            result = exc
        outcome.append(result)
        scope.cancel()

    def _deliver(self, stream: WatchStream) -> str:
        """In the watch thread: hand each response to the trio thread."""
        for response in stream.responses():
            if response.compact_revision:
                return "compacted"
            if response.canceled:
                raise StoreUnavailable(f"watch canceled by etcd: {response.cancel_reason}")
            try:
                trio.from_thread.run_sync(self._on_response, stream, response)
            except (trio.Cancelled, trio.RunFinishedError):
                return "cancelled"
        return "cancelled"

    async def _liveness(self, stream: WatchStream, outcome: list[str | StoreUnavailable],
                        scope: trio.CancelScope) -> None:
        interval = self.progress_interval
        silence = interval + self.progress_timeout
        next_request = trio.current_time() + interval
        while True:
            await trio.sleep_until(min(next_request, self._last_heard + silence))
            now = trio.current_time()
            if now >= self._last_heard + silence:
                self.counters.silent += 1
                outcome.append(StoreUnavailable(f"watch: nothing heard for {silence:g} s"))
                scope.cancel()
                return
            if now >= next_request:
                stream.request_progress()
                next_request = now + interval

    def _on_response(self, stream: WatchStream, response) -> None:
        if stream is not self._stream:
            return  # a late delivery from a stream already given up
        self._last_heard = trio.current_time()
        self._broken_at = None
        events = response.events
        if events:
            root = self.root
            aors = self._aors
            for event in events:
                kv = event.kv
                aor, bid = split_key(root, kv.key)
                if event.type == _PUT:
                    aors.setdefault(aor, {})[bid] = kv.value  # decoded when looked up
                    continue
                bindings = aors.get(aor)
                if bindings is not None:
                    bindings.pop(bid, None)
                    if not bindings:
                        del aors[aor]
            self.counters.events += len(events)
            self._advance(events[-1].kv.mod_revision)
        elif not response.created:
            # A progress notification: every event up to the header's
            # revision has been delivered.
            self._advance(response.header.revision)

    def _advance(self, revision: int, *, force: bool = False) -> None:
        if revision > self.revision or force:
            self.revision = revision
            self._advanced.set()
            self._advanced = trio.Event()
