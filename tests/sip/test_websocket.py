"""The sans-IO SIP-over-WebSocket core (RFC 7118): upgrade rules, one SIP
message per frame, limits and keep-alive timing with ``now`` advanced by hand.
The client side is wsproto's own client connection."""

from __future__ import annotations

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, Request, TextMessage,
)

from cluster.sip.websocket import SipWebSocket, looks_like_sip

OPTIONS = (b"OPTIONS sip:edge@example.test SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK1\r\n"
           b"Call-ID: a\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def server(now: float = 0.0, **limits) -> SipWebSocket:
    limits.setdefault("max_message", 4000)
    limits.setdefault("origins", frozenset())
    limits.setdefault("ping_interval", 30.0)
    limits.setdefault("handshake_timeout", 10.0)
    return SipWebSocket(now=now, **limits)


def upgraded(**limits) -> tuple[SipWebSocket, WSConnection]:
    ws = server(**limits)
    client = WSConnection(ConnectionType.CLIENT)
    out = ws.receive(client.send(Request(host="edge.example.test", target="/", subprotocols=["sip"])), 0.0)
    client.receive_data(out.data)
    (accept,) = list(client.events())
    assert isinstance(accept, AcceptConnection) and accept.subprotocol == "sip"
    assert ws.open and not out.close
    return ws, client


def test_an_upgrade_with_the_sip_subprotocol_is_accepted_and_frames_carry_messages():
    ws, client = upgraded()
    out = ws.receive(client.send(TextMessage(OPTIONS.decode())) + client.send(BytesMessage(OPTIONS)), 1.0)
    assert out.messages == (OPTIONS, OPTIONS)
    client.receive_data(ws.send_message(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"))
    (reply,) = list(client.events())
    assert isinstance(reply, TextMessage) and reply.data.startswith("SIP/2.0 200 OK")


def test_a_message_split_over_frames_is_joined():
    ws, client = upgraded()
    half = len(OPTIONS) // 2
    data = client.send(TextMessage(OPTIONS[:half].decode(), message_finished=False))
    data += client.send(TextMessage(OPTIONS[half:].decode(), message_finished=True))
    assert ws.receive(data, 1.0).messages == (OPTIONS,)


def test_an_upgrade_without_the_sip_subprotocol_is_refused():
    ws = server()
    client = WSConnection(ConnectionType.CLIENT)
    out = ws.receive(client.send(Request(host="edge", target="/", subprotocols=["chat"])), 0.0)
    client.receive_data(out.data)
    (reject,) = [e for e in client.events() if isinstance(e, RejectConnection)]
    assert reject.status_code == 400 and out.close and out.events == ("ws_no_sip_subprotocol",)


def test_the_origin_allow_list():
    allowed = frozenset({"https://app.example.test"})
    for origin, status in ((b"https://app.example.test", None), (b"https://evil.example.test", 403), (None, 403)):
        ws = server(origins=allowed)
        client = WSConnection(ConnectionType.CLIENT)
        headers = [(b"Origin", origin)] if origin else []
        out = ws.receive(client.send(Request(host="edge", target="/", subprotocols=["sip"],
                                             extra_headers=headers)), 0.0)
        client.receive_data(out.data)
        event = next(client.events())
        if status is None:
            assert isinstance(event, AcceptConnection)
        else:
            assert isinstance(event, RejectConnection) and event.status_code == status
            assert out.events == ("ws_origin_refused",) and out.close


def test_a_malformed_upgrade_is_answered_400():
    for garbage in (b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", b"\x16\x03\x01 not http\r\n\r\n",
                    b"OPTIONS sip:x SIP/2.0\r\n\r\n"):
        out = server().receive(garbage, 0.0)
        assert out.data.startswith(b"HTTP/1.1 400 ") and out.close and out.events == ("ws_bad_upgrade",)


def test_a_message_over_the_limit_closes_with_1009():
    ws, client = upgraded(max_message=1024)
    out = ws.receive(client.send(BytesMessage(b"x" * 2000)), 1.0)
    assert out.close and out.events == ("ws_oversize",) and not out.messages
    client.receive_data(out.data)
    (close,) = list(client.events())
    assert isinstance(close, CloseConnection) and close.code == 1009


def test_a_text_frame_that_is_not_sip_is_dropped_and_named():
    ws, client = upgraded()
    out = ws.receive(client.send(TextMessage("hello there")) + client.send(TextMessage(OPTIONS.decode())), 1.0)
    assert out.messages == (OPTIONS,) and out.events == ("ws_not_sip",) and not out.close


def test_keepalive_crlf_is_answered():
    ws, client = upgraded()
    out = ws.receive(client.send(TextMessage("\r\n\r\n")), 1.0)
    client.receive_data(out.data)
    (pong,) = list(client.events())
    assert isinstance(pong, TextMessage) and pong.data == "\r\n" and out.events == ("ws_keepalive",)


def test_silence_gets_a_ping_then_a_close_one_interval_later():
    ws, client = upgraded(ping_interval=30.0)
    assert ws.deadline() == 30.0
    assert ws.handle_timer(29.9).data == b""
    ping = ws.handle_timer(30.0)
    client.receive_data(ping.data)
    (event,) = list(client.events())
    assert isinstance(event, Ping)
    assert ws.deadline() == 60.0
    # An answer (any frame) puts the next ping an interval after it.
    ws.receive(client.send(event.response()), 45.0)
    assert ws.deadline() == 75.0
    ws.handle_timer(75.0)
    out = ws.handle_timer(105.0)
    assert out.close and out.events == ("ws_ping_timeout",)


def test_an_upgrade_that_never_finishes_is_cut_at_the_handshake_deadline():
    ws = server(now=100.0, handshake_timeout=5.0)
    ws.receive(b"GET / HTTP/1.1\r\n", 101.0)
    assert ws.deadline() == 105.0
    out = ws.handle_timer(105.0)
    assert out.close and out.events == ("ws_upgrade_timeout",)


def test_looks_like_sip():
    assert looks_like_sip(OPTIONS)
    assert looks_like_sip(b"SIP/2.0 180 Ringing\r\n\r\n")
    assert not looks_like_sip(b"hello")
    assert not looks_like_sip(b"GET / HTTP/1.1\r\n")
    assert not looks_like_sip(b" SIP/2.0")


def test_a_frame_trickled_in_is_cut_after_the_message_timeout():
    ws, client = upgraded(message_timeout=10.0)
    frame = client.send(TextMessage(OPTIONS.decode()))
    # A byte every few seconds keeps the keep-alive clock happy, not the
    # message clock (as TCP's edge.tcp_message_timeout).
    for i, byte in enumerate(frame[:4]):
        assert ws.receive(bytes([byte]), 1.0 + 3 * i).messages == ()
    assert ws.deadline() == 11.0
    assert ws.handle_timer(10.9).data == b""
    out = ws.handle_timer(11.0)
    assert out.close and out.events == ("ws_slow_message",)
    client.receive_data(out.data)
    (close,) = [e for e in client.events() if isinstance(e, CloseConnection)]
    assert close.code == 1008


def test_a_message_fragmented_over_frames_counts_from_its_first_fragment():
    ws, client = upgraded(message_timeout=10.0)
    half = len(OPTIONS) // 2
    assert ws.receive(client.send(TextMessage(OPTIONS[:half].decode(), message_finished=False)), 2.0).messages == ()
    assert ws.deadline() == 12.0
    assert ws.handle_timer(12.0).events == ("ws_slow_message",)


def test_whole_messages_and_pongs_never_start_the_message_clock():
    ws, client = upgraded(message_timeout=10.0, ping_interval=30.0)
    assert ws.receive(client.send(TextMessage(OPTIONS.decode())), 1.0).messages == (OPTIONS,)
    assert ws.deadline() == 31.0
    ping = ws.handle_timer(31.0)
    client.receive_data(ping.data)
    (event,) = list(client.events())
    assert isinstance(event, Ping)
    assert ws.receive(client.send(event.response()), 32.0).events == ()
    assert ws.deadline() == 62.0  # the next keep-alive, not 32 + 10
    # A message completed after part of one was pending stops the clock.
    frame = client.send(TextMessage(OPTIONS.decode()))
    ws.receive(frame[:3], 40.0)
    assert ws.deadline() == 50.0
    assert ws.receive(frame[3:], 45.0).messages == (OPTIONS,)
    assert ws.deadline() == 75.0
