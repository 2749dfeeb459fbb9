"""Asserted identity within a trust domain (RFC 3325), sans-IO.

The cluster asserts who a request comes from only after authenticating it:
``P-Asserted-Identity`` (PAI) names the authenticated identity. A PAI or
``P-Preferred-Identity`` (PPI) received from outside the trusted networks is
an unverified claim and is removed before anything reads it (§5). Before a
request leaves for a next hop that is not trusted, the PAI goes too when the
user asked for privacy (``Privacy: id``, §7); towards trusted peers it stays,
which is what lets them show the caller without authenticating again.
"""

from __future__ import annotations

from cluster.sip import Request

PAI = "P-Asserted-Identity"
PPI = "P-Preferred-Identity"


def strip_untrusted(request: Request) -> bool:
    """RFC 3325 §5: identity headers from an untrusted source are dropped;
    True when there was one."""
    return (request.remove(PAI) + request.remove(PPI)) > 0


def assert_identity(request: Request, aor: str) -> None:
    """Name the authenticated identity ``aor`` (a canonical sip: AOR) in a
    PAI, replacing any other. The PPI the user agent may have sent was a
    hint for this choice (§9.2) and is spent."""
    request.remove(PPI)
    request.set(PAI, f"<{aor}>")


def wants_privacy(request: Request) -> bool:
    """``Privacy: id`` (RFC 3325 §9.3, values from RFC 3323 §4.2)."""
    for value in request.get_all("privacy"):
        if any(v.strip().lower() == "id" for v in value.split(";")):
            return True
    return False


def for_next_hop(request: Request, hop_trusted: bool) -> None:
    """RFC 3325 §5/§7: before forwarding to an element outside the trust
    domain, remove the PAI if the user asked for privacy of its identity."""
    if not hop_trusted and wants_privacy(request):
        request.remove(PAI)
