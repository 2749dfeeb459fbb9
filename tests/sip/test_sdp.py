"""SDP parsing/serialisation (RFC 8866) and the RFC 3264 answerer."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.sip.errors import ParseError
from cluster.sip.offer_answer import Codec, NegotiatedCodec, make_answer, negotiated_codecs
from cluster.sip.sdp import (
    Attribute,
    Bandwidth,
    Connection,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
    TimeDescription,
    parse_sdp,
)

RFC5118 = Path(__file__).resolve().parents[1] / "conformance" / "rfc5118"


def crlf(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


AUDIO_VIDEO = crlf(
    "v=0",
    "o=alice 2890844526 2890844527 IN IP4 atlanta.example.com",
    "s=-",
    "c=IN IP4 192.0.2.10",
    "b=AS:512",
    "t=0 0",
    "a=sendrecv",
    "m=audio 49170 RTP/AVP 0 8 97 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:97 opus/48000/2",
    "a=fmtp:97 useinbandfec=1",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "m=video 51372 RTP/AVP 31 96",
    "c=IN IP4 192.0.2.11",
    "b=TIAS:256000",
    "a=rtpmap:96 H264/90000",
    "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1",
    "a=recvonly",
)


def body_of(name: str) -> bytes:
    message = (RFC5118 / f"{name}.dat").read_bytes()
    head, sep, body = message.partition(b"\r\n\r\n")
    assert sep
    # The torture messages declare their body length; check we split right.
    length = next(l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    assert int(length.split(b":")[1]) == len(body)
    return body


# --- parsing ---------------------------------------------------------------


def test_parse_audio_video() -> None:
    sdp = parse_sdp(AUDIO_VIDEO)
    assert sdp.version == 0
    assert sdp.origin == Origin(
        "alice", 2890844526, 2890844527, "IN", "IP4", "atlanta.example.com"
    )
    assert sdp.session_name == "-"
    assert sdp.connection == Connection("IN", "IP4", "192.0.2.10")
    assert sdp.bandwidths == [Bandwidth("AS", 512)]
    assert sdp.times == [TimeDescription(0, 0)]
    assert sdp.attributes == [Attribute("sendrecv")]
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.port_count) == ("audio", 49170, None)
    assert audio.proto == "RTP/AVP"
    assert audio.formats == ["0", "8", "97", "101"]
    assert audio.rtpmap() == {
        "0": RtpMap("PCMU", 8000, None),
        "97": RtpMap("opus", 48000, 2),
        "101": RtpMap("telephone-event", 8000, None),
    }
    assert audio.fmtp("101") == "0-16"
    assert audio.fmtp("97") == "useinbandfec=1"
    assert audio.fmtp("0") is None
    # PT 8 has no rtpmap line: the RFC 3551 static table answers.
    assert audio.codec("8") == RtpMap("PCMA", 8000, 1)
    assert audio.codec("97") == RtpMap("opus", 48000, 2)
    assert audio.codec("55") is None
    assert Attribute("ptime", "20") in audio.attributes
    assert video.connections == [Connection("IN", "IP4", "192.0.2.11")]
    assert video.bandwidths == [Bandwidth("TIAS", 256000)]
    assert video.codec("31") == RtpMap("H261", 90000, None)
    assert sdp.direction() == "sendrecv"
    assert sdp.direction(audio) == "sendrecv"  # session-level default
    assert sdp.direction(video) == "recvonly"  # media level overrides
    assert audio.direction is None and video.direction == "recvonly"
    assert sdp.effective_connection(audio) == Connection("IN", "IP4", "192.0.2.10")
    assert sdp.effective_connection(video) == Connection("IN", "IP4", "192.0.2.11")


def test_direction_defaults_to_sendrecv_without_attributes() -> None:
    sdp = parse_sdp(crlf("v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", "m=audio 1 RTP/AVP 0"))
    assert sdp.direction(sdp.media[0]) == "sendrecv"


def test_ipv6_in_sdp() -> None:
    # RFC 5118 §4.7
    sdp = parse_sdp(body_of("ipv6-in-sdp"))
    assert sdp.origin == Origin("assistant", 971731711378798081, 0, "IN", "IP6", "2001:db8::20")
    assert sdp.session_name == "Live video feed for today's meeting"
    assert sdp.connection == Connection("IN", "IP6", "2001:db8::20")
    assert sdp.times == [TimeDescription(3338481189, 3370017201)]
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.formats) == ("audio", 6000, ["2"])
    assert audio.rtpmap() == {"2": RtpMap("G726-32", 8000, None)}
    assert (video.media, video.port, video.formats) == ("video", 6024, ["107"])
    assert video.codec("107") == RtpMap("H263-1998", 90000, None)
    assert sdp.effective_connection(video).address == "2001:db8::20"


def test_multiple_ip_families_in_sdp() -> None:
    # RFC 5118 §4.8: one IPv4 and one IPv6 stream, c= only at media level.
    sdp = parse_sdp(body_of("mult-ip-in-sdp"))
    assert sdp.origin.address == "host.example.com"
    assert sdp.session_name == ""
    assert sdp.connection is None
    audio, video = sdp.media
    assert sdp.effective_connection(audio) == Connection("IN", "IP4", "192.0.2.1")
    assert sdp.effective_connection(video) == Connection("IN", "IP6", "2001:db8::1")
    assert audio.codec("0") == RtpMap("PCMU", 8000, 1)


def test_ipv4_mapped_ipv6_in_sdp() -> None:
    # RFC 5118 §4.9
    sdp = parse_sdp(body_of("ipv4-mapped-ipv6"))
    assert sdp.origin.addrtype == "IP6"
    assert sdp.origin.address == "::ffff:192.0.2.2"
    assert sdp.connection == Connection("IN", "IP6", "::ffff:192.0.2.2")
    assert sdp.session_name == "Call me soon, please!"


@pytest.mark.parametrize("name", ["ipv6-in-sdp", "mult-ip-in-sdp", "ipv4-mapped-ipv6"])
def test_rfc5118_bodies_round_trip(name: str) -> None:
    body = body_of(name)
    assert parse_sdp(body).serialize() == body


def test_bare_lf_is_accepted() -> None:
    lf = AUDIO_VIDEO.replace(b"\r\n", b"\n")
    assert parse_sdp(lf) == parse_sdp(AUDIO_VIDEO)
    assert parse_sdp(lf).serialize() == AUDIO_VIDEO
    assert parse_sdp(AUDIO_VIDEO.decode()) == parse_sdp(AUDIO_VIDEO)


def test_multicast_connection_forms() -> None:
    sdp = parse_sdp(
        crlf(
            "v=0",
            "o=- 1 1 IN IP4 h",
            "s=-",
            "c=IN IP4 224.2.1.1/127/3",
            "t=0 0",
            "m=audio 5000 RTP/AVP 0",
            "c=IN IP6 FF15::101/3",
            "c=IN IP4 233.252.0.1/127",
        )
    )
    assert sdp.connection == Connection("IN", "IP4", "224.2.1.1", 127, 3)
    assert sdp.media[0].connections == [
        Connection("IN", "IP6", "FF15::101", None, 3),
        Connection("IN", "IP4", "233.252.0.1", 127, None),
    ]


FULL = crlf(
    "v=0",
    "o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1",
    "s=Call to John Smith",
    "i=SDP Offer #1",
    "u=http://www.jdoe.example.com/home.html",
    "e=Jane Doe <jane@jdoe.example.com>",
    "p=+1 617 555-6011",
    "c=IN IP4 224.2.17.12/127",
    "b=CT:128",
    "t=3724394400 3724398000",
    "r=604800 3600 0 90000",
    "t=3724484400 0",
    "z=2882844526 -1h 2898848070 0",
    "k=prompt",
    "a=recvonly",
    "a=tool:ünïcode tool",
    "a=empty:",
    "m=audio 49170/2 RTP/AVP 0",
    "i=main audio",
    "c=IN IP6 2001:db8::1",
    "c=IN IP6 2001:db8::2",
    "b=AS:64",
    "k=clear:secret",
    "a=rtpmap:0 PCMU/8000",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=sctp-port:5000",
    "m=video 0 RTP/AVP 31",
)


@pytest.mark.parametrize("body", [AUDIO_VIDEO, FULL], ids=["audio-video", "all-fields"])
def test_round_trip_is_byte_exact(body: bytes) -> None:
    sdp = parse_sdp(body)
    assert sdp.serialize() == body
    assert sdp.to_bytes() == body
    assert bytes(sdp) == body


def test_all_fields_parse() -> None:
    sdp = parse_sdp(FULL)
    assert sdp.information == "SDP Offer #1"
    assert sdp.uri == "http://www.jdoe.example.com/home.html"
    assert sdp.emails == ["Jane Doe <jane@jdoe.example.com>"]
    assert sdp.phones == ["+1 617 555-6011"]
    assert sdp.times == [
        TimeDescription(3724394400, 3724398000, ("604800 3600 0 90000",)),
        TimeDescription(3724484400, 0),
    ]
    assert sdp.timezones == [(2882844526, "-1h"), (2898848070, "0")]
    assert sdp.key == "prompt"
    assert sdp.attributes == [
        Attribute("recvonly"),
        Attribute("tool", "ünïcode tool"),
        Attribute("empty", ""),
    ]
    audio, app, video = sdp.media
    assert (audio.port, audio.port_count, audio.information, audio.key) == (
        49170,
        2,
        "main audio",
        "clear:secret",
    )
    assert [c.address for c in audio.connections] == ["2001:db8::1", "2001:db8::2"]
    assert app.formats == ["webrtc-datachannel"]
    assert app.codec("webrtc-datachannel") is None
    assert video.port == 0


def test_non_utf8_text_survives_round_trip() -> None:
    # RFC 8866 §6.10: a=charset may announce a non-UTF-8 encoding.
    body = crlf("v=0", "o=- 1 1 IN IP4 h", "s=x", "t=0 0", "a=charset:ISO-8859-1").replace(
        b"s=x", b"s=caf\xe9"
    )
    assert parse_sdp(body).serialize() == body


def test_canonical_order_on_serialize() -> None:
    # Liberal parse of a body with session lines out of order; serialisation
    # writes RFC 8866 §5 order.
    sdp = parse_sdp(
        crlf("v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", "c=IN IP4 192.0.2.1", "a=x", "b=AS:1")
    )
    assert sdp.serialize() == crlf(
        "v=0", "o=- 1 1 IN IP4 h", "s=-", "c=IN IP4 192.0.2.1", "b=AS:1", "t=0 0", "a=x"
    )


def test_editing_and_direction_setter() -> None:
    sdp = parse_sdp(AUDIO_VIDEO)
    video = sdp.media[1]
    video.direction = "inactive"
    assert video.attributes[-1] == Attribute("inactive")
    assert sdp.direction(video) == "inactive"
    video.direction = None
    assert video.direction is None and sdp.direction(video) == "sendrecv"
    audio = sdp.media[0]
    audio.direction = "sendonly"
    assert audio.attributes[-1] == Attribute("sendonly")
    with pytest.raises(ValueError):
        audio.direction = "both"
    audio.port = 40000
    assert b"m=audio 40000 RTP/AVP 0 8 97 101\r\n" in sdp.serialize()


def test_built_from_scratch() -> None:
    sdp = SessionDescription(
        origin=Origin("-", 7, 1, "IN", "IP6", "2001:db8::5"),
        connection=Connection("IN", "IP6", "2001:db8::5"),
        media=[MediaDescription("audio", 4000, "RTP/AVP", ["0"])],
    )
    expected = crlf(
        "v=0",
        "o=- 7 1 IN IP6 2001:db8::5",
        "s=-",
        "c=IN IP6 2001:db8::5",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0",
    )
    assert sdp.serialize() == expected
    assert parse_sdp(expected) == sdp


@pytest.mark.parametrize("value", ["evil\r\nm=audio 1 RTP/AVP 0", "a\nb", "nul\x00"])
def test_serialize_refuses_line_injection(value: str) -> None:
    sdp = parse_sdp(AUDIO_VIDEO)
    sdp.session_name = value
    with pytest.raises(ValueError):
        sdp.serialize()


_HEAD = ("v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        crlf(*_HEAD[1:]),  # no v=
        crlf("v=1", *_HEAD[1:]),  # unsupported version
        crlf(*_HEAD, "v=0"),
        crlf("v=0", "s=-", "t=0 0"),  # no o=
        crlf("v=0", "o=- 1 1 IN IP4 h", "t=0 0"),  # no s=
        crlf("v=0", "o=- 1 1 IN IP4 h", "s=-"),  # no t=
        crlf(*_HEAD, "o=- 1 1 IN IP4 h"),
        crlf(*_HEAD, "s=again"),
        crlf(*_HEAD, "c=IN IP4 a", "c=IN IP4 b"),
        crlf(*_HEAD, "garbage"),
        crlf(*_HEAD, "a =x"),
        crlf(*_HEAD, "x=unknown"),
        crlf(*_HEAD, "A=upper"),
        crlf(*_HEAD, "a="),
        crlf(*_HEAD, "a=:value"),
        crlf(*_HEAD, "", "a=x"),  # empty line in the middle
        crlf("v=0", "o=- 1 IN IP4 h", "s=-", "t=0 0"),
        crlf("v=0", "o=- x 1 IN IP4 h", "s=-", "t=0 0"),
        crlf("v=0", "o=- ² 1 IN IP4 h", "s=-", "t=0 0"),
        crlf("v=0", "o=- 1 " + "9" * 30 + " IN IP4 h", "s=-", "t=0 0"),
        crlf(*_HEAD, "c=IN IP4"),
        crlf(*_HEAD, "c=IN IP4 224.2.1.1/x"),
        crlf(*_HEAD, "c=IN IP4 224.2.1.1/1/2/3"),
        crlf(*_HEAD, "c=IN IP6 ff15::1/1/2"),
        crlf(*_HEAD, "c=IN IP4 /1"),
        crlf(*_HEAD, "b=AS"),
        crlf(*_HEAD, "b=AS:fast"),
        crlf(*_HEAD, "b=:1"),
        crlf("v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0"),
        crlf("v=0", "o=- 1 1 IN IP4 h", "s=-", "r=1d 1h 0"),  # r= before t=
        crlf(*_HEAD, "r=1d 1h"),
        crlf(*_HEAD, "r=1d 1h 0x"),
        crlf(*_HEAD, "z=1"),
        crlf(*_HEAD, "z=1 1y"),
        crlf(*_HEAD, "z=0 1h", "z=1 2h"),
        crlf(*_HEAD, "k=a", "k=b"),
        crlf(*_HEAD, "m=audio 1 RTP/AVP"),  # no format
        crlf(*_HEAD, "m=audio"),
        crlf(*_HEAD, "m=audio x RTP/AVP 0"),  # bad port
        crlf(*_HEAD, "m=audio 65536 RTP/AVP 0"),
        crlf(*_HEAD, "m=audio -1 RTP/AVP 0"),
        crlf(*_HEAD, "m=audio 1/0 RTP/AVP 0"),
        crlf(*_HEAD, "m=audio 1/ RTP/AVP 0"),
        crlf(*_HEAD, "m=audio 1 RTP/AVP 0", "t=0 0"),  # session line in media
        crlf(*_HEAD, "m=audio 1 RTP/AVP 0", "o=- 1 1 IN IP4 h"),
        crlf(*_HEAD, "m=audio 1 RTP/AVP 0", "i=a", "i=b"),
        crlf(*_HEAD, "m=audio 1 RTP/AVP 0", "q=x"),
        crlf(*_HEAD, "s2=x"),
        crlf(*_HEAD) + b"a=x\rb=y\r\n",  # bare CR
        crlf(*_HEAD) + b"a=x\x00\r\n",
    ],
)
def test_malformed_sdp_raises_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_sdp(body)
    assert info.value.status == 400


def test_malformed_rtpmap_is_ignored_not_fatal() -> None:
    sdp = parse_sdp(
        crlf(*_HEAD, "m=audio 1 RTP/AVP 96 0", "a=rtpmap:96 opus", "a=rtpmap:0 PCMU/fast")
    )
    assert sdp.media[0].rtpmap() == {}
    assert sdp.media[0].codec("96") is None
    assert sdp.media[0].codec("0") == RtpMap("PCMU", 8000, 1)


# --- fuzzing: any bytes give a description or ParseError ------------------


def _parse_or_error(data: bytes) -> None:
    try:
        sdp = parse_sdp(data)
    except ParseError as exc:
        assert exc.status == 400
        return
    assert isinstance(sdp, SessionDescription)
    # Whatever parsed serialises, and re-parses to the same description.
    again = sdp.serialize()
    assert parse_sdp(again) == sdp
    assert parse_sdp(again).serialize() == again


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    _parse_or_error(data)


# Mostly well-formed lines of every type, so the parse usually succeeds and
# the round-trip check below gets exercised, plus some arbitrary text.
_GOOD = {
    "i": ["x", ""],
    "u": ["http://h/"],
    "e": ["a@h"],
    "p": ["+1 555"],
    "c": ["IN IP4 1.2.3.4", "IN IP6 ::1/2", "IN IP4 224.0.0.1/1/2", "IN  IP4\t0.0.0.0 "],
    "b": ["AS:64", "CT: 1"],
    "t": ["0 0", "1 2"],
    "r": ["1d 1h 0", "7 3 0 09"],
    "k": ["prompt"],
    "a": ["rtpmap:96 opus/48000/2", "sendonly", "fmtp:96 a=b", "x:", "ü:ü"],
    "m": ["audio 0 RTP/AVP 0", "video 1/2 RTP/AVP 0 96", "image 9 udptl t38"],
}
_GOOD_LINE = st.sampled_from(sorted(_GOOD)).flatmap(
    lambda kind: st.sampled_from(_GOOD[kind]).map(lambda value: f"{kind}={value}")
)
_ANY_LINE = st.tuples(st.sampled_from("vosiuepcbtrzkamx"), st.text(max_size=20)).map(
    lambda kv: f"{kv[0]}={kv[1]}"
)
_LINES = st.lists(st.one_of(_GOOD_LINE, _GOOD_LINE, _GOOD_LINE, _ANY_LINE), max_size=12)


@settings(max_examples=300, deadline=None)
@given(_LINES, st.sampled_from(["\r\n", "\n"]))
def test_structured_lines(lines: list[str], eol: str) -> None:
    body = eol.join(["v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", *lines]) + eol
    _parse_or_error(body.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_sdp(data: st.DataObject) -> None:
    body = bytearray(FULL)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    _parse_or_error(bytes(body[:cut]))


# --- offer/answer (RFC 3264) ------------------------------------------------


def offer_with(*media: str, session: tuple[str, ...] = ()) -> SessionDescription:
    return parse_sdp(
        crlf(
            "v=0",
            "o=alice 1 1 IN IP4 192.0.2.1",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "t=0 0",
            *session,
            *media,
        )
    )


SUPPORTED = [("PCMA", 8000), ("PCMU", 8000), ("opus", 48000, 2), ("telephone-event", 8000)]


def answer(offer: SessionDescription, supported=SUPPORTED, **kw) -> SessionDescription:
    kw.setdefault("ports", [4000 + 2 * i for i in range(len(offer.media))])
    return make_answer(offer, supported, address="192.0.2.99", session_id=42, **kw)


def test_answer_intersects_in_offer_order_with_offer_payload_types() -> None:
    offer = parse_sdp(AUDIO_VIDEO)
    ans = answer(offer, session_version=3, username="bob")
    assert ans.origin == Origin("bob", 42, 3, "IN", "IP4", "192.0.2.99")
    assert ans.connection == Connection("IN", "IP4", "192.0.2.99")
    assert ans.times == offer.times
    audio, video = ans.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 4000, "RTP/AVP")
    # Offer order 0 8 97 101, not our PCMA-first preference.
    assert audio.formats == ["0", "8", "97", "101"]
    assert audio.rtpmap() == {
        "0": RtpMap("PCMU", 8000, None),
        "8": RtpMap("PCMA", 8000, 1),
        "97": RtpMap("opus", 48000, 2),
        "101": RtpMap("telephone-event", 8000, None),
    }
    # telephone-event fmtp carried over; opus fmtp is not ours to echo.
    assert audio.fmtp("101") == "0-16"
    assert audio.fmtp("97") is None
    assert audio.direction == "sendrecv"
    # No video codec in common: rejected with port 0, keeping one format.
    assert (video.media, video.port, video.formats, video.attributes) == ("video", 0, ["31"], [])
    assert parse_sdp(ans.serialize()) == ans


def test_no_common_codec_rejects_stream() -> None:
    offer = offer_with("m=audio 5000 RTP/AVP 18 96", "a=rtpmap:96 iLBC/8000")
    (media,) = answer(offer).media
    assert media.port == 0
    assert media.formats == ["18"]


def test_only_telephone_event_in_common_rejects_stream() -> None:
    offer = offer_with("m=audio 5000 RTP/AVP 18 101", "a=rtpmap:101 telephone-event/8000")
    (media,) = answer(offer).media
    assert media.port == 0


def test_offered_port_zero_is_answered_with_port_zero() -> None:
    offer = offer_with("m=audio 0 RTP/AVP 0", "m=audio 5002 RTP/AVP 0")
    first, second = answer(offer).media
    assert (first.port, first.formats) == (0, ["0"])
    assert second.port == 4002


@pytest.mark.parametrize(
    ("offered", "wanted", "expected"),
    [
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendonly", "sendrecv", "recvonly"),
        ("recvonly", "sendrecv", "sendonly"),
        ("inactive", "sendrecv", "inactive"),
        ("sendrecv", "sendonly", "sendonly"),
        ("sendrecv", "inactive", "inactive"),
        ("sendonly", "sendonly", "inactive"),
        ("recvonly", "recvonly", "inactive"),
    ],
)
def test_direction_mapping(offered: str, wanted: str, expected: str) -> None:
    offer = offer_with("m=audio 5000 RTP/AVP 0", f"a={offered}")
    ans = answer(offer, direction=wanted)
    assert ans.media[0].direction == expected
    assert ans.direction(ans.media[0]) == expected


def test_session_level_direction_applies_to_media() -> None:
    offer = offer_with("m=audio 5000 RTP/AVP 0", session=("a=sendonly",))
    assert answer(offer).media[0].direction == "recvonly"


def test_dynamic_payload_types_matched_by_name_and_rate_case_insensitively() -> None:
    offer = offer_with(
        "m=audio 5000 RTP/AVP 111 112 113 100",
        "a=rtpmap:111 OPUS/48000/2",
        "a=rtpmap:112 Telephone-Event/48000",  # wrong clock rate for our spec
        "a=rtpmap:113 pcmu/8000",  # dynamic number for a static codec
        "a=rtpmap:100 TELEPHONE-EVENT/8000",
        "a=fmtp:100 0-15",
    )
    (media,) = answer(offer).media
    assert media.formats == ["111", "113", "100"]
    assert media.codec("111") == RtpMap("OPUS", 48000, 2)
    assert media.fmtp("100") == "0-15"


def test_channel_count_must_match() -> None:
    offer = offer_with(
        "m=audio 5000 RTP/AVP 96 97", "a=rtpmap:96 opus/48000/1", "a=rtpmap:97 L16/8000/2"
    )
    media = answer(offer, supported=[("opus", 48000, 2), ("L16", 8000)]).media[0]
    assert media.port == 0
    # An omitted channel count means one on both sides.
    offer = offer_with("m=audio 5000 RTP/AVP 96", "a=rtpmap:96 L16/8000/1")
    assert answer(offer, supported=[("L16", 8000)]).media[0].formats == ["96"]


def test_codec_fmtp_from_spec_and_ports_by_media_type() -> None:
    offer = parse_sdp(AUDIO_VIDEO)
    ans = make_answer(
        offer,
        [("PCMU", 8000), Codec("H264", 90000, fmtp="profile-level-id=42e01f")],
        address="2001:db8::9",
        ports={"video": 6000},
        session_id=1,
    )
    audio, video = ans.media
    assert audio.port == 0  # no port given for audio
    assert (video.port, video.formats) == (6000, ["96"])
    assert video.fmtp("96") == "profile-level-id=42e01f"
    # Offer is recvonly for video, so we only send.
    assert video.direction == "sendonly"
    assert ans.origin.addrtype == "IP6" and ans.connection.address == "2001:db8::9"
    assert b"c=IN IP6 2001:db8::9\r\n" in ans.serialize()


def test_answer_argument_errors() -> None:
    offer = parse_sdp(AUDIO_VIDEO)
    with pytest.raises(ValueError):
        make_answer(offer, SUPPORTED, address="h", ports=[1], session_id=1)
    with pytest.raises(ValueError):
        make_answer(offer, SUPPORTED, address="h", ports=[1, 70000], session_id=1)
    with pytest.raises(ValueError):
        make_answer(offer, SUPPORTED, address="h", ports=[1, 2], session_id=1, direction="x")


def test_negotiated_codecs() -> None:
    offer = parse_sdp(AUDIO_VIDEO)
    ans = answer(offer)
    assert negotiated_codecs(offer, ans) == [
        [
            NegotiatedCodec("0", "PCMU", 8000, None, None),
            NegotiatedCodec("8", "PCMA", 8000, 1, None),
            NegotiatedCodec("97", "opus", 48000, 2, None),
            NegotiatedCodec("101", "telephone-event", 8000, None, "0-16"),
        ],
        [],
    ]


def test_negotiated_codecs_follows_answer_order_and_drops_remapped_types() -> None:
    offer = offer_with("m=audio 5000 RTP/AVP 0 8 96", "a=rtpmap:96 opus/48000/2")
    peer_answer = offer_with("m=audio 6000 RTP/AVP 8 96 0 9", "a=rtpmap:96 iLBC/8000")
    (common,) = negotiated_codecs(offer, peer_answer)
    # 96 was remapped to another codec, 9 was never offered.
    assert [c.payload_type for c in common] == ["8", "0"]


def test_negotiated_codecs_needs_matching_m_lines() -> None:
    offer = parse_sdp(AUDIO_VIDEO)
    with pytest.raises(ParseError):
        negotiated_codecs(offer, offer_with("m=audio 5000 RTP/AVP 0"))
