"""The edge's routing view between etcd's word and what its links show (DESIGN §4).

etcd is the authority on membership, but it learns of a dead worker only
when the worker's lease expires (``cluster.lease_ttl`` seconds). An edge
sees it sooner: its ZeroMQ link to the worker drops (a killed process resets
its connections at once; a stalled one stops answering link heartbeats).
``Router`` folds both into the ring the edge routes with:

* **Suspects.** A worker whose link is down is *suspect*: it stays in
  etcd's ring but is left out of the ring the edge routes with, so each of
  its Call-IDs goes to the member that would own it once the worker's lease
  expires (``Ring`` places keys by the member set only, so that is exactly
  the owner every node will agree on then). A request that found the link
  down is sent there at once instead of being answered 503. The suspicion
  ends when the link comes back, or when etcd confirms (the worker leaves
  the view).
* **Pins.** A worker that comes back (its link returns, or it re-registers
  after a restart or a stall) must not take its Call-IDs back in the middle
  of the transactions its successor started for them: the successor holds
  their state. While any worker is suspect or left within the last
  ``pin_ttl`` seconds, each Call-ID routed away from its "natural" owner
  (the owner in the ring with those workers back) is pinned to the worker
  that got it, and keeps going there until no message of that Call-ID was
  routed for ``pin_ttl`` seconds. The default 32 s is Timer B/F (64·T1,
  RFC 3261 §17.1.1.2, §17.1.2.2): no transaction the successor started
  outlives it. In-dialog requests after that may go back: any shard can
  forward them (their Route set carries the dialog token).
* **Holding the ring.** When etcd stalls for longer than the lease TTL,
  every lease expires at once when it comes back and the view holds no
  worker, though every worker is alive. Rather than answer every request
  503 until the workers register again, the edge keeps routing to the
  workers that left within the last ``pin_ttl`` seconds whose links are
  up. Only a view that would leave the ring empty is held: a worker that
  loses its lease alone (cut from etcd, DESIGN §4 split brain) leaves the
  ring, and its Call-IDs go to the shard that took over.

Nothing here does I/O or reads a clock: ``now`` is a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable

from .ring import DEFAULT_VNODES, EmptyRing, Ring

__all__ = ["DEFAULT_MAX_PINS", "DEFAULT_PIN_TTL", "Router"]

DEFAULT_PIN_TTL = 32.0
"""Seconds a rerouted Call-ID stays with its new shard after its last message."""
DEFAULT_MAX_PINS = 65536
"""Most pinned Call-IDs; beyond it the least recently routed is forgotten."""


class Router:
    """Ring owner of a Call-ID, as the edge routes it (see the module doc)."""

    __slots__ = ("pin_ttl", "max_pins", "vnodes", "ring", "effective", "suspects", "held",
                 "_departed", "_natural", "_pins", "_present", "rerouted", "pins_evicted")

    def __init__(self, *, pin_ttl: float = DEFAULT_PIN_TTL, max_pins: int = DEFAULT_MAX_PINS,
                 vnodes: int = DEFAULT_VNODES) -> None:
        if pin_ttl <= 0:
            raise ValueError(f"pin_ttl must be positive, got {pin_ttl!r}")
        if max_pins < 1:
            raise ValueError(f"max_pins must be at least 1, got {max_pins!r}")
        self.pin_ttl = pin_ttl
        self.max_pins = max_pins
        self.vnodes = vnodes
        self.ring: Ring | None = None
        """etcd's ring, as last given to ``update``."""
        self.effective: Ring | None = None
        """The ring the edge routes with: etcd's (or the held one) without suspects."""
        self.suspects: dict[str, float] = {}
        """Worker id -> when its link was seen down."""
        self.held: tuple[str, ...] = ()
        """Workers routed to although etcd's view lost them all at once."""
        self._departed: dict[str, float] = {}
        # Ring with the suspect and departed workers back: whose the Call-ID
        # would be without the failure (None while nothing departed).
        self._natural: Ring | None = None
        self._pins: dict[bytes, tuple[str, float]] = {}
        self._present: set[str] = set()
        self.rerouted = 0
        """Messages routed away from a suspect or departed worker."""
        self.pins_evicted = 0

    # -- inputs --------------------------------------------------------------------

    def update(self, ring: Ring, present: Iterable[str], now: float) -> None:
        """etcd's new ring; ``present`` are the workers in the view (draining
        ones too: they left the ring on purpose and are never held)."""
        previous = self.ring
        present = set(present)
        self.ring = ring
        for worker in ring:
            self._departed.pop(worker, None)
        if previous is not None:
            for worker in previous:
                if worker not in ring:
                    self._departed[worker] = now
        self._present = present
        if len(ring):
            self.held = ()
        else:
            self.held = tuple(sorted(w for w, since in self._departed.items()
                                     if w not in present and w not in self.suspects
                                     and now - since < self.pin_ttl))
        self._rebuild()

    def suspect(self, worker: str, now: float) -> bool:
        """The link to ``worker`` is down; True if that is news."""
        if worker in self.suspects:
            return False
        self.suspects[worker] = now
        # A held worker whose link dies is let go for good.
        self.held = tuple(w for w in self.held if w != worker)
        self._rebuild()
        return True

    def restore(self, worker: str, now: float) -> bool:
        """The link to ``worker`` is up again; True if it was suspect. Its
        Call-IDs routed elsewhere meanwhile stay pinned there."""
        if self.suspects.pop(worker, None) is None:
            return False
        # It was away: what its successors took stays pinned for pin_ttl.
        self._departed[worker] = now
        self._rebuild()
        return True

    def expire(self, now: float) -> None:
        """Forget pins and departures older than ``pin_ttl``; call now and then."""
        ttl = self.pin_ttl
        stale = [w for w, since in self._departed.items() if now - since >= ttl]
        for worker in stale:
            del self._departed[worker]
        # etcd confirmed the loss of a suspect long enough ago: forget it.
        gone = [w for w in self.suspects if w not in self._present and w not in self._departed]
        for worker in gone:
            del self.suspects[worker]
        stale += gone
        if stale:
            if self.ring is not None and not len(self.ring):
                self.held = tuple(w for w in self.held if w in self._departed)
            self._rebuild()
        # Pins are (re)inserted with the same TTL, so the dict is in expiry
        # order: the expired ones are a prefix.
        pins = self._pins
        while pins:
            call_id = next(iter(pins))
            if pins[call_id][1] > now:
                break
            del pins[call_id]

    # -- the per-message question ---------------------------------------------------

    def owner(self, call_id: bytes, now: float) -> str:
        """The worker to send ``call_id`` to; EmptyRing if none."""
        effective = self.effective
        if effective is None:
            raise EmptyRing("no ring yet")
        pins = self._pins
        if pins:
            pin = pins.pop(call_id, None)
            if pin is not None and pin[1] > now and pin[0] in effective:
                # Re-inserted: the dict's order is least recently routed first.
                pins[call_id] = (pin[0], now + self.pin_ttl)
                return pin[0]
        owner = effective.owner(call_id)
        natural = self._natural
        if natural is not None and natural.owner(call_id) != owner:
            self.rerouted += 1
            pins[call_id] = (owner, now + self.pin_ttl)
            if len(pins) > self.max_pins:
                del pins[next(iter(pins))]
                self.pins_evicted += 1
        return owner

    # -- reading ---------------------------------------------------------------------

    @property
    def by_ring(self) -> bool:
        """Whether ``owner`` is the effective ring's owner for every Call-ID:
        nothing is pinned and no worker is away to route around, so a caller
        may look owners up in ``effective`` itself (the edge's compiled loop)."""
        return self._natural is None and not self._pins


    @property
    def pinned(self) -> int:
        return len(self._pins)

    @property
    def departed(self) -> tuple[str, ...]:
        return tuple(sorted(self._departed))

    def _rebuild(self) -> None:
        ring = self.ring
        if ring is None:
            return
        base = set(ring.members) | set(self.held)
        live = base - self.suspects.keys()
        self.effective = Ring(live, epoch=ring.epoch, vnodes=self.vnodes)
        away = (self.suspects.keys() | self._departed.keys()) - live
        self._natural = Ring(live | away, epoch=ring.epoch, vnodes=self.vnodes) if away else None
