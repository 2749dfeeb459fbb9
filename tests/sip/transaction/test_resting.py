"""Transactions that only wait keep their messages as bytes (RFC 3261 §17).

After the final response a transaction lives on for Timer J, L, M, K or D
only to absorb or answer retransmissions. TransactionLayer.rest() compacts
its messages once the caller is done with the input's actions; answering a
retransmission from then on must not parse anything again.
"""

from __future__ import annotations

from cluster.sip.message import restores
from cluster.sip.transaction import Send, TransactionLayer

from .messages import SERVER, UDP, request, response


def test_a_completed_server_transaction_answers_retransmissions_from_bytes():
    layer = TransactionLayer()
    register = request("REGISTER", uri="sip:example.com")
    layer.receive(register, UDP, 0.0)
    ok = response(register, 200)
    layer.send_response(ok, 0.1)
    assert not register.compacted, "the TU may still read it while the actions are performed"
    assert layer.rest() == 2
    assert register.compacted and ok.compacted
    before = restores()
    again = request("REGISTER", uri="sip:example.com")
    actions = layer.receive(again, UDP, 0.5)
    assert [type(a) for a in actions] == [Send]
    assert actions[0].message.to_bytes() == ok.to_bytes()
    assert restores() == before
    assert layer.rest() == 0


def test_an_accepted_invite_server_transaction_rests_request_and_2xx():
    layer = TransactionLayer()
    invite = request("INVITE")
    layer.receive(invite, UDP, 0.0)
    ok = response(invite, 200)
    layer.send_response(ok, 0.1)
    assert layer.state(("s", "z9hG4bKabc1", "client.example.com", 5060, "INVITE")) == "Accepted"
    layer.rest()
    before = restores()
    assert layer.receive(request("INVITE"), UDP, 0.2) == []  # absorbed (RFC 6026 §7.1)
    assert restores() == before
    assert invite.compacted and ok.compacted


def test_client_transactions_rest_after_their_final_response():
    layer = TransactionLayer()
    bye = request("BYE", branch="z9hG4bKout1", to_tag="tt1")
    layer.send_request(bye, SERVER, 0.0)
    layer.receive(response(bye, 200), SERVER, 0.1)
    invite = request("INVITE", branch="z9hG4bKout2")
    busy, busy_again = response(invite, 486), response(invite, 486)
    layer.send_request(invite, SERVER, 0.0)
    layer.receive(busy, SERVER, 0.1)  # Completed: the ACK is kept to resend
    assert layer.rest() == 3
    assert bye.compacted and invite.compacted
    before = restores()
    resent = layer.receive(busy_again, SERVER, 0.3)
    acks = [a for a in resent if isinstance(a, Send)]
    assert len(acks) == 1 and acks[0].message.method == "ACK"
    assert restores() == before


def test_a_rested_message_still_reads_correctly_when_asked():
    layer = TransactionLayer()
    register = request("REGISTER", uri="sip:example.com")
    layer.receive(register, UDP, 0.0)
    layer.send_response(response(register, 200), 0.1)
    layer.rest()
    assert register.call_id == "call-1@client.example.com"
    assert register.cseq.method == "REGISTER"


def test_merged_request_bookkeeping_ends_without_reading_the_rested_request():
    layer = TransactionLayer(reject_merged=True)
    register = request("REGISTER", uri="sip:example.com")
    layer.receive(register, UDP, 0.0)
    layer.send_response(response(register, 200), 0.1)
    layer.rest()
    before = restores()
    from .messages import run_timers
    run_timers(layer, 40.0)  # Timer J ends the transaction
    assert len(layer) == 0
    assert restores() == before
    # The merge key is gone with it: the same request is new again.
    again = request("REGISTER", uri="sip:example.com", headers=())
    assert layer.receive(again, UDP, 41.0)[0].request is again
