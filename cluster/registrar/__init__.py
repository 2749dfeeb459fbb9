"""Registrar and location service (RFC 3261 §10, RFC 3327, RFC 5626; DESIGN §6).

- ``binding``: the stored value, ``Binding``, and its stable id.
- ``rules``: sans-IO §10.3 processing, ``process_register`` → ``RegisterResult``.
- ``store``: the ``LocationStore`` API, ``MemoryLocationStore`` and the
  read-decide-write loop ``register``.
- ``etcd_store``: ``EtcdLocationStore`` (group commit, bucket leases).
- ``cache``: ``LocationCache``, the watch-fed read cache for INVITE lookups.

``etcd_store`` and ``cache`` import trio and etcd3; import them explicitly.
"""

from .binding import Binding, Source, binding_id, contact_key
from .rules import (
    DEFAULT_POLICY, REPLIES, Outcome, RegisterResult, RegistrarPolicy, address_of_record, failure,
    process_register,
)
from .store import AorState, LocationStore, MemoryLocationStore, StoreUnavailable, register

__all__ = [
    "AorState", "Binding", "DEFAULT_POLICY", "LocationStore", "MemoryLocationStore", "Outcome",
    "REPLIES", "RegisterResult", "RegistrarPolicy", "Source", "StoreUnavailable",
    "address_of_record", "binding_id", "contact_key", "failure", "process_register", "register",
]
