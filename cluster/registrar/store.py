"""The location service as seen by the registrar: a small storage API.

As in Kamailio, where ``registrar`` reaches ``usrloc`` only through
``usrloc_api_t``, the §10.3 logic (``rules``) never sees etcd: it reads an
AOR's bindings, decides, and hands back writes. ``LocationStore`` is that
API; ``EtcdLocationStore`` implements it for the cluster and
``MemoryLocationStore`` for unit tests.

Concurrency is optimistic, per AOR: ``read`` returns the bindings with an
opaque version, ``apply`` commits only if the AOR is still at that version
(atomically for all of the AOR's puts and deletes) and reports a conflict
otherwise. Two shards registering contacts for one AOR at once therefore
cannot lose an update: the loser re-reads and re-runs §10.3 on the new state
(``register``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cluster.coordination.errors import CoordinationError
from cluster.sip.message import Request

from .binding import Binding, Source
from .rules import (
    DEFAULT_POLICY, Outcome, RegisterResult, RegistrarPolicy, address_of_record, failure,
    process_register,
)

__all__ = [
    "AorState", "LocationStore", "MemoryLocationStore", "StoreUnavailable", "register",
]

#: The Warning text of a 503 when the location service cannot be used.
STORE_UNAVAILABLE_WARNING = "location service unavailable"

# Conflicts need a writer for the same AOR to commit in between our read and
# our write; five losses in a row means a hot AOR under a write storm.
DEFAULT_ATTEMPTS = 5


#: The store could not be used (etcd unreachable, timed out, refused). Says
#: nothing about the data; worth retrying later. The registrar's name for the
#: project's one "etcd unavailable" error, so an ``except StoreUnavailable``
#: also catches what the shared etcd connection raises.
StoreUnavailable = CoordinationError


@dataclass(frozen=True, slots=True)
class AorState:
    """Every stored binding of one AOR (expired ones included: they exist
    until their lease ends) and the version ``apply`` compares against."""

    bindings: tuple[Binding, ...]
    version: Any

    def live(self, now: float) -> list[Binding]:
        return [b for b in self.bindings if b.expires_at > now]


class LocationStore(Protocol):
    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        """Unexpired bindings of ``aor``."""
        ...

    async def read(self, aor: str) -> AorState:
        ...

    async def apply(
        self, aor: str, puts: Iterable[Binding], deletes: Iterable[str], *, expect: Any,
    ) -> int | None:
        """Write atomically if ``aor`` is still at version ``expect`` (None:
        unconditionally). Returns the new version number, or None when
        another writer got there first."""
        ...

    async def all_aors(self) -> list[str]:
        ...


class MemoryLocationStore:
    """An in-process ``LocationStore`` with the same conflict semantics."""

    def __init__(self) -> None:
        self._aors: dict[str, tuple[int, dict[str, Binding]]] = {}
        self._revision = 0
        self.conflicts = 0

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        return (await self.read(aor)).live(now)

    async def read(self, aor: str) -> AorState:
        version, bindings = self._aors.get(aor, (0, {}))
        return AorState(tuple(bindings.values()), version)

    async def apply(
        self, aor: str, puts: Iterable[Binding], deletes: Iterable[str], *, expect: Any,
    ) -> int | None:
        version, bindings = self._aors.get(aor, (0, {}))
        if expect is not None and expect != version:
            self.conflicts += 1
            return None
        updated = dict(bindings)
        for bid in deletes:
            updated.pop(bid, None)
        for binding in puts:
            updated[binding.binding_id] = binding
        self._revision += 1
        if updated:
            self._aors[aor] = (self._revision, updated)
        else:
            self._aors.pop(aor, None)
        return self._revision

    async def all_aors(self) -> list[str]:
        return sorted(self._aors)

    def expire(self, now: float) -> int:
        """Drop expired bindings (what etcd leases do); returns how many."""
        dropped = 0
        for aor in list(self._aors):
            version, bindings = self._aors[aor]
            keep = {bid: b for bid, b in bindings.items() if b.expires_at > now}
            if len(keep) != len(bindings):
                dropped += len(bindings) - len(keep)
                self._revision += 1
                if keep:
                    self._aors[aor] = (self._revision, keep)
                else:
                    del self._aors[aor]
        return dropped


async def register(
    store: LocationStore,
    request: Request,
    *,
    now: float,
    policy: RegistrarPolicy = DEFAULT_POLICY,
    source: Source | None = None,
    edge: str | None = None,
    conn: int | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    flow_path: str | None = None,
) -> RegisterResult:
    """Process a REGISTER against ``store``: read, decide (§10.3), write.

    A conflict means another writer changed the AOR after our read, so the
    decision may rest on stale bindings: read again and decide again, up to
    ``attempts`` times, then answer 500 with Retry-After.
    """
    aor = address_of_record(request)
    if aor is None:
        # Nothing to read for a non-SIP To: the rules produce the 400.
        return process_register(request, now=now, current=(), policy=policy)
    try:
        for _ in range(attempts):
            state = await store.read(aor)
            result = process_register(
                request, now=now, current=state.bindings, policy=policy, source=source, edge=edge,
                conn=conn, flow_path=flow_path,
            )
            if not result.has_writes:
                return result
            if await store.apply(aor, result.puts, result.deletes, expect=state.version) is not None:
                return result
    except StoreUnavailable as exc:
        # The Warning says a fixed text: etcd's own error (endpoints, users,
        # certificate names) is for the node's log, never for the peer.
        result = failure(Outcome.STORE_UNAVAILABLE, STORE_UNAVAILABLE_WARNING, policy=policy, aor=aor)
        return replace(result, detail=exc.reason)
    return failure(Outcome.CONFLICT, f"{attempts} conflicting writes for {aor}", policy=policy, aor=aor)
