"""One registration: a Contact bound to an address-of-record (RFC 3261 §10).

A ``Binding`` is what the location service stores and what a proxy reads to
reach a user agent: the Contact URI exactly as registered, its q-value and
absolute expiry, the Call-ID/CSeq that last touched it (§10.3 step 7
ordering), the outbound flow identity (RFC 5626 ``+sip.instance`` and
``reg-id``), the Path to route through (RFC 3327) and where the REGISTER
came from (transport, source address, edge node, edge connection) so a
request to a UA behind NAT or on a TCP/TLS/WS connection goes back the way
the UA reached us.

``binding_id`` names the binding inside its AOR. Re-registering the same
Contact, or the same outbound flow (instance + reg-id) with a new Contact,
yields the same id, so the write replaces instead of adding. Sans-IO: no
clock, no store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cluster.sip.uri import URI, SipURI, parse_uri

__all__ = ["Binding", "Source", "binding_id", "contact_key"]

# Stored records carry this; a reader rejects versions it does not know.
RECORD_VERSION = 1


@dataclass(frozen=True, slots=True)
class Source:
    """Where a REGISTER arrived from: the transport and the packet's source
    address (the NAT's public side: RFC 3581 ``received``/``rport``,
    RFC 5626 §5.3 flow)."""

    transport: str
    host: str
    port: int


def contact_key(uri: URI) -> str:
    """Comparison form of a Contact URI (RFC 3261 §10.3 step 7, §19.1.4).

    For SIP URIs: the canonical user@host:port (escapes normalised, host
    lowercased) plus every parameter and header, names and values
    lowercased and sorted, so spellings equal under §19.1.4 give one key.
    Slightly stricter than §19.1.4 (an extra unknown parameter on one side
    makes a different key): at worst a refresh that changes its parameters
    leaves the old binding to expire, never merges two UAs.
    """
    if isinstance(uri, SipURI):
        key = uri.aor()
        if uri.params:
            key += ";" + ";".join(sorted(
                n.lower() if v is None else f"{n.lower()}={v.lower()}" for n, v in uri.params))
        if uri.headers:
            key += "?" + "&".join(sorted(f"{n.lower()}={v}" for n, v in uri.headers))
        return key
    return str(uri).lower()


def binding_id(aor: str, contact: URI, instance: str | None, reg_id: int | None) -> str:
    """Stable id of a binding within its AOR.

    RFC 5626 §6: a Contact carrying ``+sip.instance`` names a flow of that
    UA instance (with ``reg-id``, one of several flows), which replaces the
    previous binding of the same instance and reg-id whatever its Contact
    URI. Without an instance the Contact URI itself is the identity
    (RFC 3261 §10.3 step 7).
    """
    if instance is not None:
        text = f"{aor}\x00i\x00{instance}\x00{'' if reg_id is None else reg_id}"
    else:
        text = f"{aor}\x00c\x00{contact_key(contact)}"
    # 96 bits: collision-free for any realistic number of contacts per AOR,
    # short enough to keep etcd keys small.
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class Binding:
    aor: str
    """Canonical address-of-record (``SipURI.aor()`` of the To URI)."""
    contact: str
    """The Contact URI as registered, URI parameters and escaped headers
    kept (RFC 4475 cparam02, regescrt); header-field parameters such as
    ``expires`` or ``q`` are not part of it (cparam01)."""
    expires_at: float
    """Absolute expiry, on the same clock as the ``now`` the registrar was given."""
    call_id: str
    cseq: int
    q: float | None = None
    instance: str | None = None
    """RFC 5626 ``+sip.instance`` without quotes and angle brackets."""
    reg_id: int | None = None
    path: tuple[str, ...] = ()
    """Path header values, topmost first (RFC 3327 §5.3); a request to the
    contact gets them as its Route set."""
    source: Source | None = None
    edge: str | None = None
    """Id of the edge node the REGISTER came through."""
    conn: int | None = None
    """That edge's connection id for stream transports (RFC 5626 §5.3: reach
    the UA over the connection it opened)."""
    user_agent: str | None = None
    registered_at: float = 0.0
    """When the REGISTER that last wrote this binding was processed."""
    binding_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.binding_id:
            object.__setattr__(self, "binding_id", binding_id(
                self.aor, parse_uri(self.contact), self.instance, self.reg_id))

    def remaining(self, now: float) -> int:
        """Whole seconds left, for the ``expires`` Contact parameter of a 200
        (RFC 3261 §10.3 step 8). The epsilon keeps float noise from turning
        a just-granted 3600 into 3599."""
        left = self.expires_at - now
        return int(left + 1e-6) if left > 0 else 0

    # -- storage ----------------------------------------------------------------

    def to_record(self) -> dict:
        """A msgpack/JSON-ready dict (lists, str, int, float, None only)."""
        source = self.source
        return {
            "v": RECORD_VERSION,
            "id": self.binding_id,
            "aor": self.aor,
            "contact": self.contact,
            "expires_at": self.expires_at,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "q": self.q,
            "instance": self.instance,
            "reg_id": self.reg_id,
            "path": list(self.path),
            "source": None if source is None else [source.transport, source.host, source.port],
            "edge": self.edge,
            "conn": self.conn,
            "user_agent": self.user_agent,
            "registered_at": self.registered_at,
        }

    @classmethod
    def from_record(cls, record: dict) -> Binding:
        """Inverse of ``to_record``; raises ValueError for a record this code
        cannot read (unknown version, missing or mistyped field)."""
        try:
            if record.get("v") != RECORD_VERSION:
                raise ValueError(f"unknown binding record version {record.get('v')!r}")
            source = record.get("source")
            q = record.get("q")
            binding = cls(
                aor=_text(record["aor"]),
                contact=_text(record["contact"]),
                expires_at=float(record["expires_at"]),
                call_id=_text(record["call_id"]),
                cseq=int(record["cseq"]),
                q=None if q is None else float(q),
                instance=record.get("instance"),
                reg_id=record.get("reg_id"),
                path=tuple(record.get("path") or ()),
                source=None if source is None else Source(str(source[0]), str(source[1]), int(source[2])),
                edge=record.get("edge"),
                conn=record.get("conn"),
                user_agent=record.get("user_agent"),
                registered_at=float(record.get("registered_at") or 0.0),
                binding_id=_text(record["id"]),
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"malformed binding record: {exc!r}") from None
        return binding


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    return value
