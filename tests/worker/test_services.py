"""The worker's services: trust and advertised-address answers are memoised
without changing what they answer."""

from cluster.sip import parse_uri
from nodes.worker.services import _MEMO_LIMIT, Services


def _services(trusted=("127.0.0.0/8", "2001:db8::/32")) -> Services:
    return Services(domains=["example.com"], trusted=trusted, nonce_secret=b"k" * 32,
                    nonce_ttl=300, locations=None, users=None)


def test_is_trusted_answers_the_same_the_second_time():
    services = _services()
    for _ in range(2):
        assert services.is_trusted("127.0.0.9")
        assert services.is_trusted("[2001:db8::7]")
        assert not services.is_trusted("192.0.2.1")
        assert not services.is_trusted("not-an-address")


def test_trust_memo_is_bounded():
    services = _services()
    for i in range(_MEMO_LIMIT + 10):
        assert not services.is_trusted(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}")
    assert len(services._trusted_hosts) <= _MEMO_LIMIT
    assert services.is_trusted("127.0.0.1")


def test_learned_advertised_address_is_us():
    services = _services()
    uri = parse_uri("sip:192.0.2.50:5080;lr")
    assert not services.local.is_us(uri)
    services.learn_advertise("192.0.2.50:5080")
    services.learn_advertise("192.0.2.50:5080")
    assert services.local.is_us(uri)
    assert services.local.sent_by_texts.count("192.0.2.50:5080") == 1
