"""RFC 3263 server location, sans-IO: records in, ordered destinations out
(``rfc3263.locate``), with the per-node answer cache (``cache``) and the
list of destinations that did not answer (``blocklist``). The dnspython
lookups live in the worker runtime (``nodes.worker.resolver``)."""

from .blocklist import Blocklist
from .cache import CacheLimits, DnsCache
from .records import Answer, Naptr, Query, Srv
from .rfc3263 import Destination, Limits, Location, Target, locate, srv_order

__all__ = ["Answer", "Blocklist", "CacheLimits", "Destination", "DnsCache", "Limits", "Location",
           "Naptr", "Query", "Srv", "Target", "locate", "srv_order"]
