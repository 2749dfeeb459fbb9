"""The compiled hot path, optional: which compiled modules this process uses.

Each module here is a C extension built by setup.py from
``cluster/speedups/<stem>.c`` when a compiler is at hand; the Python modules
they mirror stay the specification and the fallback (issue #21). A name
below is None when its module was not built, or when
``SIPCLUSTER_PURE_PYTHON`` is set to anything but ``""`` or ``"0"``: the
switch that runs a whole process on the pure-Python path (the test suite's
second run, a suspected bug in the compiled code). Callers import the names
from here and test them for None: this is the one place that decides.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["PURE_PYTHON", "edge", "in_use", "sip"]

PURE_PYTHON = os.environ.get("SIPCLUSTER_PURE_PYTHON", "") not in ("", "0")
"""Set from the environment at import: the compiled modules are refused."""


def _load(name: str) -> ModuleType | None:
    if PURE_PYTHON:
        return None
    try:
        return __import__(f"{__name__}.{name}", fromlist=[name])
    except ImportError:
        return None


edge = _load("_edge")
"""The edge's UDP drain (nodes/edge/udp.py), or None."""
sip = _load("_sip")
"""The parser's header-field loop (cluster/sip/parser.py), or None."""


def in_use() -> dict[str, bool]:
    """Each compiled module and whether this process uses it (for status and tests)."""
    return {"edge": edge is not None, "sip": sip is not None}
