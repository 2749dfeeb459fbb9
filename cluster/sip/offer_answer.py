"""The answerer's side of the SDP offer/answer model (RFC 3264), no I/O.

:func:`make_answer` builds an answer from an offer and the codecs the answerer
supports; :func:`negotiated_codecs` reads back what an offer/answer exchange
agreed on. Codec matching is by encoding name (case-insensitive, RFC 4855 §3),
clock rate and channel count, never by payload type number: dynamic numbers
are the offerer's to choose (RFC 3264 §6.1).

Deliberately out of scope: codec-specific fmtp negotiation (H.264 profiles,
Opus parameters), which the application supplies through :class:`Codec.fmtp`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ParseError
from .sdp import (
    Attribute,
    Connection,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
)

__all__ = ["Codec", "CodecSpec", "NegotiatedCodec", "make_answer", "negotiated_codecs"]


@dataclass(frozen=True, slots=True)
class Codec:
    """A payload format the answerer can use.

    ``channels`` None means one, as an rtpmap without channels does (RFC 8866
    §6.6). ``fmtp`` is what the answer says in ``a=fmtp`` for this codec; when
    None, only telephone-event copies the offer's (the events both sides
    support, RFC 4733 §2.5.1.1), other codecs get no fmtp line.
    """

    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: str | None = None


CodecSpec = Codec | tuple[str, int] | tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class NegotiatedCodec:
    """A payload format both sides agreed on for one m= line."""

    payload_type: str
    name: str
    clock_rate: int
    channels: int | None
    fmtp: str | None


# Payload formats that carry no media on their own (RFC 4733 events, RFC 3389
# comfort noise): a stream whose only common formats are these is rejected.
_AUXILIARY = frozenset(("telephone-event", "cn"))

_SEND = {"sendrecv": True, "sendonly": True, "recvonly": False, "inactive": False}
_RECV = {"sendrecv": True, "sendonly": False, "recvonly": True, "inactive": False}
_DIRECTION_OF = {
    (True, True): "sendrecv",
    (True, False): "sendonly",
    (False, True): "recvonly",
    (False, False): "inactive",
}

_Key = tuple[str, int, int]


def _key(name: str, clock_rate: int, channels: int | None) -> _Key:
    return (name.lower(), clock_rate, 1 if channels is None else channels)


def _codec_of(spec: CodecSpec) -> Codec:
    if isinstance(spec, Codec):
        return spec
    return Codec(*spec)


def _rtpmap_text(fmt: str, rtpmap: RtpMap) -> str:
    text = f"{fmt} {rtpmap.encoding}/{rtpmap.clock_rate}"
    return text if rtpmap.channels is None else f"{text}/{rtpmap.channels}"


def _port_for(ports: Sequence[int] | Mapping[str, int], index: int, media: MediaDescription) -> int:
    port = ports.get(media.media, 0) if isinstance(ports, Mapping) else ports[index]
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


def _rejected(offered: MediaDescription) -> MediaDescription:
    # RFC 3264 §6: a rejected stream keeps its m= line with port zero and at
    # least one of the offered formats.
    return MediaDescription(offered.media, 0, offered.proto, offered.formats[:1])


def _answer_media(
    offer: SessionDescription,
    offered: MediaDescription,
    supported: dict[_Key, Codec],
    port: int,
    want_send: bool,
    want_recv: bool,
) -> MediaDescription:
    # RFC 3264 §6: a stream offered with port zero must be answered with port zero.
    if offered.port == 0 or port == 0:
        return _rejected(offered)
    accepted: list[tuple[str, RtpMap, Codec]] = []
    has_media = False
    for fmt in offered.formats:
        rtpmap = offered.codec(fmt)
        if rtpmap is None:
            continue
        codec = supported.get(_key(rtpmap.encoding, rtpmap.clock_rate, rtpmap.channels))
        if codec is None:
            continue
        accepted.append((fmt, rtpmap, codec))
        if rtpmap.encoding.lower() not in _AUXILIARY:
            has_media = True
    if not has_media:
        return _rejected(offered)

    # RFC 3264 §6.1: same payload type numbers as the offer; this answerer
    # keeps the offer's order too, so the offerer's preference wins.
    answer = MediaDescription(offered.media, port, offered.proto, [fmt for fmt, _, _ in accepted])
    attrs = answer.attributes
    for fmt, rtpmap, codec in accepted:
        attrs.append(Attribute("rtpmap", _rtpmap_text(fmt, rtpmap)))
        fmtp = codec.fmtp
        if fmtp is None and rtpmap.encoding.lower() == "telephone-event":
            fmtp = offered.fmtp(fmt)
        if fmtp is not None:
            attrs.append(Attribute("fmtp", f"{fmt} {fmtp}"))

    # RFC 3264 §6.1: send only what the offerer will receive, receive only
    # what it will send (sendonly -> recvonly, recvonly -> sendonly,
    # inactive -> inactive), further limited by what the answerer wants.
    offered_direction = offer.direction(offered)
    send = want_send and _RECV[offered_direction]
    recv = want_recv and _SEND[offered_direction]
    attrs.append(Attribute(_DIRECTION_OF[(send, recv)]))
    return answer


def make_answer(
    offer: SessionDescription,
    supported: Sequence[CodecSpec],
    *,
    address: str,
    ports: Sequence[int] | Mapping[str, int],
    session_id: int,
    session_version: int = 0,
    username: str = "-",
    session_name: str = "-",
    addrtype: str | None = None,
    direction: str = "sendrecv",
) -> SessionDescription:
    """Answer ``offer`` with the codecs in ``supported`` (RFC 3264 §6).

    ``ports`` is either a port per offered m= line, in order, or a port per
    media type (``{"audio": 4000}``); a missing or zero port rejects the
    stream. ``address`` goes into o= and the session c= line; ``addrtype``
    defaults to IP6 for an address with a colon (written without brackets,
    RFC 5118 §4.7), IP4 otherwise. ``direction`` is what the answerer wants
    (e.g. "sendonly" to put the offerer on hold); the answer never claims more
    than the offer allows. ``session_version`` must grow by one with each new
    description in the session (RFC 3264 §8).
    """
    if direction not in _SEND:
        raise ValueError(f"not an SDP direction: {direction!r}")
    if not isinstance(ports, Mapping) and len(ports) != len(offer.media):
        raise ValueError(f"{len(ports)} ports for {len(offer.media)} offered m= lines")
    index: dict[_Key, Codec] = {}
    for spec in supported:
        codec = _codec_of(spec)
        index.setdefault(_key(codec.name, codec.clock_rate, codec.channels), codec)
    if addrtype is None:
        addrtype = "IP6" if ":" in address else "IP4"
    want_send = _SEND[direction]
    want_recv = _RECV[direction]

    # RFC 3264 §6: one m= line per offered m= line, in the same order.
    media = [
        _answer_media(offer, offered, index, _port_for(ports, i, offered), want_send, want_recv)
        for i, offered in enumerate(offer.media)
    ]
    return SessionDescription(
        origin=Origin(username, session_id, session_version, "IN", addrtype, address),
        session_name=session_name,
        connection=Connection("IN", addrtype, address),
        # RFC 3264 §6: the answer's t= line must equal the offer's.
        times=list(offer.times),
        media=media,
    )


def negotiated_codecs(
    offer: SessionDescription, answer: SessionDescription
) -> list[list[NegotiatedCodec]]:
    """Per m= line, the formats both sides agreed on, in the answer's order.

    A rejected stream (port zero on either side) gives an empty list. Raises
    ParseError if the answer does not mirror the offer's m= lines
    (RFC 3264 §6), since then no line can be paired with its offer.
    """
    if len(answer.media) != len(offer.media):
        raise ParseError(
            f"SDP answer has {len(answer.media)} m= lines, the offer {len(offer.media)}"
        )
    result: list[list[NegotiatedCodec]] = []
    for offered, answered in zip(offer.media, answer.media):
        common: list[NegotiatedCodec] = []
        result.append(common)
        if offered.port == 0 or answered.port == 0 or offered.media != answered.media:
            continue
        offered_formats = set(offered.formats)
        for fmt in answered.formats:
            if fmt not in offered_formats:
                continue
            ours = offered.codec(fmt)
            theirs = answered.codec(fmt)
            rtpmap = theirs or ours
            if rtpmap is None:
                continue
            # RFC 3264 §6.1: a payload type in the answer means what it meant
            # in the offer; one remapped to another codec is not common.
            if ours is not None and theirs is not None and _key(*ours) != _key(*theirs):
                continue
            common.append(
                NegotiatedCodec(
                    fmt, rtpmap.encoding, rtpmap.clock_rate, rtpmap.channels, answered.fmtp(fmt)
                )
            )
    return result
