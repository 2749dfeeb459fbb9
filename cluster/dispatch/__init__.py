"""Destination sets (a dispatcher, DESIGN §7), sans-IO.

Named sets of SIP targets with priority and weight (``model``), the policies
that order a set's members for one call (``policy``), the health state
machine fed by OPTIONS probes (``health``), and the ``Dispatcher`` a worker's
transaction user asks when the application proxies to a set. Nothing here
reads a clock, draws unseeded randomness or does I/O: the worker feeds etcd's
sets and health in, and runs the probes (``nodes.worker.dispatch``).
"""

from .dispatcher import ActiveCalls, Dispatcher
from .health import HealthPolicy, MemberHealth, ProbeSchedule, Transition
from .model import (
    POLICIES, DestinationSet, HealthRecord, InvalidSet, Member, decode_health, decode_set,
    dispatcher_prefix, encode_health, encode_set, health_key, health_prefix, parse_health_key,
    set_key, sets_prefix,
)
from .policy import order

__all__ = [
    "POLICIES", "ActiveCalls", "DestinationSet", "Dispatcher", "HealthPolicy", "HealthRecord",
    "InvalidSet", "Member", "MemberHealth", "ProbeSchedule", "Transition", "decode_health",
    "decode_set", "dispatcher_prefix", "encode_health", "encode_set", "health_key", "health_prefix",
    "order", "parse_health_key", "set_key", "sets_prefix",
]
