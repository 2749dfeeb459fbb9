"""Dialogs (RFC 3261 §12), sans-IO.

A dialog is the peer-to-peer state two user agents keep for a call or a
subscription: its ID (Call-ID, local tag, remote tag), the local and remote
sequence numbers, the remote target and the route set. :class:`Dialog` takes
parsed messages in and builds in-dialog requests out; it sends nothing, reads
no clock and draws no random numbers, so a replica rebuilt with
:meth:`Dialog.from_state` on a ring successor behaves exactly like the
original.

Who calls what::

    UAC                                       UAS
    d = Dialog.from_uac_response(invite, r)   d = Dialog.from_uas_request(invite, tag)
    d.on_response(r)    # later responses     d.on_response_sent(r)  # its own answers
    status = d.on_request(req)   # requests from the peer, either role
    req = d.create_request("BYE")  # the transaction layer then adds the Via

Rules of the machine:

- ``state`` moves early → confirmed → terminated or early → terminated,
  never back; a terminated dialog ignores responses and answers every
  request with 481.
- ``local_cseq`` only grows (ACK and CANCEL reuse a number, §12.2.1.1);
  ``remote_cseq`` only grows, and a request below it is answered 500 (§12.2.2).
- The route set is fixed once the dialog is confirmed (§12.2.1.2); only the
  remote target moves, on target refresh requests and their 2xx responses.

Errors: ``ValueError`` when a method is used against its contract (a dialog
from a 100 or from a request that already has a To tag, a request on a
terminated dialog, a corrupt replicated state). Messages from
``parse_message`` never make ``on_request``/``on_response`` raise; a message
built by hand without Call-ID, From, To or CSeq raises ``ParseError`` (a
``ValueError``) from its accessors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from .address import NameAddress, parse_name_addr
from .errors import ParseError
from .fields import MAX_CSEQ
from .message import Header, Request, Response
from .uri import URI, SipURI, parse_uri

__all__ = ["Dialog"]

EARLY = "early"
CONFIRMED = "confirmed"
TERMINATED = "terminated"
_STATES = frozenset((EARLY, CONFIRMED, TERMINATED))
_ROLES = frozenset(("uac", "uas"))

# Requests that can create a dialog: INVITE (RFC 3261 §12.1), SUBSCRIBE and
# REFER (RFC 6665). A final response to one of these settles an early dialog.
_CREATING = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
# Target refresh requests: re-INVITE (RFC 3261 §12.2), UPDATE (RFC 3311),
# SUBSCRIBE and NOTIFY (RFC 6665).
_TARGET_REFRESH = frozenset(("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY"))
# Requests that carry the CSeq number of the request they belong to instead of
# a new one (RFC 3261 §9.1, §13.2.2.4).
_SAME_CSEQ = frozenset(("ACK", "CANCEL"))

_STATE_VERSION = 1
MAX_FORWARDS = "70"  # RFC 3261 §8.1.1.6


def _initial_cseq(call_id: str, local_tag: str) -> int:
    """A first local CSeq for a dialog that has none yet (the UAS side).

    RFC 3261 §12.2.1.1 points to §8.1.1.5: any value below 2**31. Derived from
    the dialog ID rather than drawn at random so the core stays deterministic;
    kept below 2**30 to leave room for the increments that follow.
    """
    digest = hashlib.blake2s(f"{call_id}\x00{local_tag}".encode("utf-8", "surrogateescape"),
                             digest_size=4).digest()
    return int.from_bytes(digest, "big") % 0x3FFFFFFF + 1


def _remote_target(message: Request | Response, default: URI) -> URI:
    # RFC 3261 §12.1.1, §12.1.2: the remote target is the Contact URI. A
    # message without one (a §8.1.1.8 violation some peers commit) keeps the
    # previous target instead of breaking the call.
    contacts = message.contacts
    if not contacts:
        return default
    uri = contacts[0].uri
    # RFC 3261 §19.1.1: URI headers belong in neither a Request-URI nor a Route.
    return uri.without_headers() if isinstance(uri, SipURI) else uri


@dataclass(slots=True, kw_only=True)
class Dialog:
    """The state of one dialog (RFC 3261 §12), mutable as the dialog evolves.

    ``local_uri``/``remote_uri`` are the From/To URIs (display names are not
    dialog state); ``route_set`` is a tuple of Record-Route values in the
    order Route header fields must list them; ``remote_cseq`` is None while
    the peer has not sent a request, ``local_cseq`` None until a UAS sends
    its first one.
    """

    call_id: str
    local_tag: str
    # None for an RFC 2543 peer that sends no tag (§12.1.1, §12.1.2).
    remote_tag: str | None
    local_uri: URI
    remote_uri: URI
    remote_target: URI
    route_set: tuple[NameAddress, ...] = ()
    local_cseq: int | None = None
    remote_cseq: int | None = None
    secure: bool = False
    state: str = EARLY
    role: str = "uac"

    @property
    def id(self) -> tuple[str, str, str | None]:
        """The dialog ID (§12): Call-ID, local tag, remote tag."""
        return (self.call_id, self.local_tag, self.remote_tag)

    # -- creation ---------------------------------------------------------------

    @classmethod
    def from_uac_response(cls, request: Request, response: Response, *, tls: bool = False) -> "Dialog":
        """The UAC's dialog from a response to its dialog-creating request (§12.1.2).

        A 101–199 with a To tag makes an early dialog, a 2xx a confirmed one.
        ``tls`` says whether the request went out over TLS (the ``secure``
        flag also needs a SIPS Request-URI). Raises ValueError for any other
        response and for a request without a From tag.
        """
        status = response.status
        remote_tag = response.to.tag
        if 200 <= status < 300:
            state = CONFIRMED
        elif 100 < status < 200 and remote_tag is not None:
            state = EARLY
        else:
            raise ValueError(f"a {status} response does not create a dialog")
        local_tag = request.from_.tag
        if local_tag is None:
            raise ValueError("the request has no From tag")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=request.from_.uri,
            remote_uri=request.to.uri,
            remote_target=_remote_target(response, request.uri),
            # §12.1.2: Record-Route of the response, in reverse order.
            route_set=tuple(reversed(response.record_routes)),
            local_cseq=request.cseq.seq,
            remote_cseq=None,
            secure=tls and request.uri.scheme == "sips",
            state=state,
            role="uac",
        )

    @classmethod
    def from_uas_request(cls, request: Request, local_tag: str, *, tls: bool = False) -> "Dialog":
        """The UAS's dialog for a dialog-creating request it answers with a
        1xx or 2xx carrying ``local_tag`` in the To (§12.1.1).

        The dialog starts early; report the response sent with
        :meth:`on_response_sent` (a 2xx confirms it). ``tls`` says whether
        the request arrived over TLS. Raises ValueError for a request that
        already has a To tag and ParseError (400) for one without Contact.
        """
        to = request.to
        if to.tag is not None:
            raise ValueError("a request with a To tag is inside a dialog already")
        if not request.contacts:
            raise ParseError("dialog-creating request without Contact")
        sender = request.from_
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=sender.tag,
            local_uri=to.uri,
            remote_uri=sender.uri,
            remote_target=_remote_target(request, request.uri),
            # §12.1.1: Record-Route of the request, in order.
            route_set=tuple(request.record_routes),
            local_cseq=None,
            remote_cseq=request.cseq.seq,
            secure=tls and request.uri.scheme == "sips",
            state=EARLY,
            role="uas",
        )

    # -- events -------------------------------------------------------------------

    def on_request(self, request: Request) -> int | None:
        """Apply a request received from the peer; return the status to
        reject it with, or None to let the caller process it.

        481 when the request is not for this dialog or the dialog is
        terminated (§12.2.2), 500 when its CSeq is below the remote sequence
        number (§12.2.2). ACK and CANCEL reuse the number of their INVITE
        and are never ordered (an ACK is never answered, whatever this
        returns). A target refresh request moves the remote target to its
        Contact; BYE terminates the dialog (§15.1.2).
        """
        if (
            self.state == TERMINATED
            or request.call_id != self.call_id
            or request.to.tag != self.local_tag
            or request.from_.tag != self.remote_tag
        ):
            return 481
        method = request.method
        if method in _SAME_CSEQ:
            return None
        seq = request.cseq.seq
        remote = self.remote_cseq
        if remote is not None and seq < remote:
            return 500
        self.remote_cseq = seq
        if method == "BYE":
            self.state = TERMINATED
        elif method in _TARGET_REFRESH:
            self.remote_target = _remote_target(request, self.remote_target)
        return None

    def on_response(self, response: Response) -> bool:
        """Apply a response to a request this side sent; return whether it
        belongs to this dialog (a fork's other To tag does not).

        For the UAC's early dialog a 2xx to the creating request confirms it
        and recomputes route set and remote target (§13.2.2.4), a final
        non-2xx terminates it (§12.3). In any state a 2xx to a target
        refresh request moves the remote target (§12.2.1.2), a 481 or 408
        terminates the dialog (§12.2.1.2) and so does a 2xx to BYE. Early
        dialogs of forks that never answered 2xx are the caller's to
        terminate (§13.2.2.4).
        """
        if (
            self.state == TERMINATED
            or response.call_id != self.call_id
            or response.from_.tag != self.local_tag
            or response.to.tag != self.remote_tag
        ):
            return False
        status = response.status
        if status < 200:
            return True
        method = response.cseq.method
        if status == 481 or status == 408:
            self.state = TERMINATED
        elif self.state == EARLY and self.role == "uac" and method in _CREATING:
            if status < 300:
                self.state = CONFIRMED
                self.route_set = tuple(reversed(response.record_routes))
                self.remote_target = _remote_target(response, self.remote_target)
            else:
                self.state = TERMINATED
        elif status < 300:
            if method == "BYE":
                self.state = TERMINATED
            elif method in _TARGET_REFRESH:
                self.remote_target = _remote_target(response, self.remote_target)
        return True

    def on_response_sent(self, response: Response) -> None:
        """Apply a response this side sent to the peer's request.

        For the UAS's early dialog a 2xx to the creating request confirms it
        and a final non-2xx terminates it (§12.1.1, §12.3).
        """
        if self.state != EARLY or self.role != "uas" or response.cseq.method not in _CREATING:
            return
        status = response.status
        if 200 <= status < 300:
            self.state = CONFIRMED
        elif status >= 300:
            self.state = TERMINATED

    def on_timeout(self) -> None:
        """An in-dialog request got no response at all (§12.2.1.2: treated as 408)."""
        self.state = TERMINATED

    def terminate(self) -> None:
        """End the dialog (BYE sent, early dialog of a losing fork, local policy)."""
        self.state = TERMINATED

    # -- building requests ---------------------------------------------------------

    def create_request(
        self, method: str, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> Request:
        """A request within this dialog (RFC 3261 §12.2.1.1).

        Fills the Request-URI and Route (loose or strict routing, decided by
        the ``lr`` of the first route), To and From with their tags, Call-ID,
        CSeq and Max-Forwards; ``headers`` are appended after those and must
        not repeat them; Contact (needed on target refresh requests) is the
        caller's. The Via is NOT added: the transaction/transport layer adds
        it when it sends the request.

        Every method but ACK and CANCEL takes the next local sequence number
        (the first one chosen per §8.1.1.5 on a UAS); ACK and CANCEL reuse
        the current one, which is the INVITE's only while nothing was sent
        after it — use :meth:`create_ack` to acknowledge a 2xx. Raises
        ValueError on a terminated dialog.
        """
        if self.state == TERMINATED:
            raise ValueError(f"cannot send {method} on a terminated dialog")
        seq = self.local_cseq
        if method in _SAME_CSEQ:
            if seq is None:
                raise ValueError(f"no request for {method} to refer to")
        else:
            seq = _initial_cseq(self.call_id, self.local_tag) if seq is None else seq + 1
            if seq > MAX_CSEQ:
                raise ValueError("local CSeq exhausted")
            self.local_cseq = seq
        return self._build(method, seq, headers, body)

    def create_ack(
        self, invite_cseq: int, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> Request:
        """The ACK for a 2xx to the INVITE numbered ``invite_cseq`` (§13.2.2.4):
        built like any in-dialog request but with the INVITE's CSeq number.
        Credentials of the INVITE, if any, go in ``headers``."""
        if self.state == TERMINATED:
            raise ValueError("cannot send ACK on a terminated dialog")
        return self._build("ACK", invite_cseq, headers, body)

    def _routing(self) -> tuple[URI, str | None]:
        """The Request-URI and the Route value (None for no Route), §12.2.1.1."""
        target = self.remote_target
        routes = self.route_set
        if not routes:
            return target, None
        first = routes[0].uri
        if isinstance(first, SipURI) and first.lr:
            # Loose routing: the remote target stays in the Request-URI.
            return target, ", ".join([str(r) for r in routes])
        # Strict routing: the first route becomes the Request-URI, minus what
        # a Request-URI may not carry (§19.1.1: the method parameter and
        # headers); the remote target goes last in the Route.
        if isinstance(first, SipURI):
            first = first.without_param("method").without_headers()
        return first, ", ".join([*[str(r) for r in routes[1:]], f"<{target}>"])

    def _build(self, method: str, seq: int, headers: Iterable[tuple[str, str]], body: bytes) -> Request:
        uri, route = self._routing()
        remote_tag = self.remote_tag
        # §12.2.1.1: To is the remote URI and tag, From the local URI and tag.
        if remote_tag is None:
            to = f"<{self.remote_uri}>"
        else:
            to = f"<{self.remote_uri}>;tag={remote_tag}"
        request = Request(method, uri)
        fields = request.headers
        if route is not None:
            fields.append(Header("route", "Route", route))
        fields.append(Header("max-forwards", "Max-Forwards", MAX_FORWARDS))
        fields.append(Header("to", "To", to))
        fields.append(Header("from", "From", f"<{self.local_uri}>;tag={self.local_tag}"))
        fields.append(Header("call-id", "Call-ID", self.call_id))
        fields.append(Header("cseq", "CSeq", f"{seq} {method}"))
        for name, value in headers:
            request.add(name, value)
        if body:
            request.body = body
        return request

    # -- replication -----------------------------------------------------------------

    def to_state(self) -> dict:
        """The dialog as plain str/int/bool/None/list values (msgpack-ready)."""
        return {
            "v": _STATE_VERSION,
            "call_id": self.call_id,
            "local_tag": self.local_tag,
            "remote_tag": self.remote_tag,
            "local_uri": str(self.local_uri),
            "remote_uri": str(self.remote_uri),
            "remote_target": str(self.remote_target),
            "route_set": [str(r) for r in self.route_set],
            "local_cseq": self.local_cseq,
            "remote_cseq": self.remote_cseq,
            "secure": self.secure,
            "state": self.state,
            "role": self.role,
        }

    @classmethod
    def from_state(cls, state: dict) -> "Dialog":
        """Rebuild a dialog from :meth:`to_state` output; ValueError
        (ParseError for a bad URI) if the state is not one it wrote."""
        try:
            if state["v"] != _STATE_VERSION:
                raise ValueError(f"unsupported dialog state version {state['v']!r}")
            routes = state["route_set"]
            if not isinstance(routes, list):
                raise TypeError("route_set is not a list")
            phase = _text(state["state"])
            role = _text(state["role"])
            if phase not in _STATES or role not in _ROLES:
                raise ValueError(f"unknown dialog state {phase!r} or role {role!r}")
            secure = state["secure"]
            if not isinstance(secure, bool):
                raise TypeError("secure is not a bool")
            return cls(
                call_id=_text(state["call_id"]),
                local_tag=_text(state["local_tag"]),
                remote_tag=_optional(state["remote_tag"], str),
                local_uri=parse_uri(_text(state["local_uri"])),
                remote_uri=parse_uri(_text(state["remote_uri"])),
                remote_target=parse_uri(_text(state["remote_target"])),
                route_set=tuple(parse_name_addr(_text(r), brackets_required=True) for r in routes),
                local_cseq=_optional(state["local_cseq"], int),
                remote_cseq=_optional(state["remote_cseq"], int),
                secure=secure,
                state=phase,
                role=role,
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed dialog state: {error}") from None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    return value


def _optional(value: object, kind: type) -> object:
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__} or None, got {type(value).__name__}")
    return value
