"""The routing application of the benchmark cluster (ops/bench/compare.py).

The built-in default application, plus one local domain, ``open.localhost``,
whose REGISTERs are stored without authentication: the "registrations/s
without auth" figure needs a registrar that does not challenge, and the
Kamailio peer (ops/bench/kamailio/proxy.cfg) serves the same domain the same
way. Everything else is the default application unchanged, so calls and
digest registrations measure what operators run.

Loaded by the workers as ``bench_app:application`` with this directory on
PYTHONPATH; the cluster must list ``open.localhost`` among its domains.
"""

from __future__ import annotations

from cluster.app import Application, Call
from cluster.app import default

OPEN_DOMAIN = "open.localhost"

application = Application(
    "bench",
    handlers=dict(default.application.handlers),
    on_failure=default.application.on_failure,
    on_response=default.application.on_response,
    redirect_domains=set(default.application.redirect_domains),
)


@application.request("REGISTER")
def register(call: Call):
    to = call.request.to.uri
    if getattr(to, "host", "").lower() == OPEN_DOMAIN:
        return call.register()
    return default.register(call)
