"""Edge defences, sans-IO (DESIGN §8): per-source request density (pike),
scanner User-Agents (secfilter), password guessing, and the ban tables they
fill (htable bans). Nothing here reads a clock or does I/O: every decision
takes ``now``; the edge and worker nodes are the adapters, and
``cluster.defence.store`` carries bans through etcd.
"""

from .bans import ADDRESS, USER, Ban, BanTable, ban_key, bans_prefix, decode_ban, encode_ban, parse_ban_key
from .edge import DROP_BANNED, DROP_RATE, DROP_SCANNER, EdgeGuard, GuardEvents
from .guessing import AuthFailures
from .limits import LogBudget, SourceRates
from .scanner import ScannerMatcher

__all__ = [
    "ADDRESS", "AuthFailures", "Ban", "BanTable", "DROP_BANNED", "DROP_RATE", "DROP_SCANNER", "EdgeGuard",
    "GuardEvents", "LogBudget", "ScannerMatcher", "SourceRates", "ban_key", "bans_prefix",
    "decode_ban", "encode_ban", "parse_ban_key", "USER",
]
