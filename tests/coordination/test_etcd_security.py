"""The one etcd connection against an etcd with TLS, client certificates and
RBAC (DESIGN §8), started by the test with certificates it generates.

Every etcd client of the project is built by ``cluster.coordination.connection``;
here each kind (the trio ``EtcdStore``, the registrar's ``EtcdKV`` store,
``UserDirectory``) works over TLS as the ``sipcluster`` user, and the bad
cases give clear errors: a wrong password, an expired client certificate, a
key outside the role, and an auth token etcd no longer accepts.
"""

from __future__ import annotations

import itertools
import time

import pytest
import trio

from cluster.auth.users import UserDirectory
from cluster.coordination import CoordinationError, EtcdStore
from cluster.coordination.connection import EtcdConnection, certificate_problem
from cluster.coordination.errors import EtcdAuthError, EtcdCredentialsRejected
from cluster.coordination.secrets import secret_key, wait_for_secret
from cluster.registrar import Binding, StoreUnavailable
from cluster.registrar.etcd_store import EtcdLocationStore
from tests.e2e.harness import wait_for

_prefixes = itertools.count(1)


def fresh_prefix() -> str:
    return f"/tls-{next(_prefixes)}-{time.monotonic_ns()}"


def test_store_reads_writes_and_watches_over_tls_as_the_node_user(secure_etcd):
    prefix = fresh_prefix()

    async def main():
        store = EtcdStore(secure_etcd.access())
        try:
            with trio.fail_after(30):
                await store.put(f"{prefix}/a", b"1")
                assert (await store.get(f"{prefix}/a")).value == b"1"
                async with store.watch_prefix(f"{prefix}/") as stream:
                    await store.put(f"{prefix}/b", b"2")
                    (event,) = await stream.__anext__()
                    assert (event.key, event.value) == (f"{prefix}/b".encode(), b"2")
        finally:
            store.close()

    trio.run(main)


def test_registrar_store_and_users_work_over_tls(secure_etcd):
    prefix = fresh_prefix()

    async def main():
        store = EtcdLocationStore(secure_etcd.access(), prefix=prefix)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            binding = Binding(aor="sip:a@localhost", contact="sip:a@127.0.0.1:5999", expires_at=time.time() + 60,
                              call_id="c1", cseq=1, registered_at=time.time())
            state = await store.read("sip:a@localhost")
            assert await store.apply("sip:a@localhost", [binding], [], expect=state.version) is not None
            assert [b.contact for b in (await store.read("sip:a@localhost")).bindings] == [binding.contact]
            nursery.cancel_scope.cancel()
        store.close()

    trio.run(main)
    directory = UserDirectory(secure_etcd.access(), prefix)
    try:
        directory.add("alice@localhost", "pw-alice")
        assert directory.get("alice@localhost").realm == "localhost"
    finally:
        directory.close()


def test_a_wrong_password_is_named_as_such(secure_etcd):
    connection = EtcdConnection(secure_etcd.access(password="not-the-password"))
    with pytest.raises(EtcdCredentialsRejected, match="etcd refused user sipcluster.*authentication failed"):
        connection.run("get", lambda: connection.client().get("/tls/x"))
    assert "authentication failed" in secure_etcd.access(password="nope").rejected_credentials()
    assert secure_etcd.access().rejected_credentials() is None


def test_a_key_outside_the_role_is_an_auth_error_not_a_crash(secure_etcd):
    connection = EtcdConnection(secure_etcd.access())
    try:
        with pytest.raises(EtcdAuthError, match="permission denied"):
            connection.run("put", lambda: connection.client().put("/elsewhere/k", b"v"))
        # The registrar's error type is the same one.
        with pytest.raises(StoreUnavailable):
            connection.run("put", lambda: connection.client().put("/elsewhere/k", b"v"))
    finally:
        connection.close()


def test_an_expired_client_certificate_is_named_in_the_error(secure_etcd):
    cert, _ = secure_etcd.pki.client("expired", "sipcluster-node", expired=True)
    assert "expired at" in certificate_problem(str(cert))
    connection = EtcdConnection(secure_etcd.access(cert=str(cert)))
    with pytest.raises(EtcdAuthError, match=f"client certificate {cert} expired at"):
        connection.run("get", lambda: connection.client().get("/tls/x"))
    # Not a wrong password: a node keeps retrying (a renewed certificate heals it).
    assert secure_etcd.access(cert=str(cert)).rejected_credentials() is None


def test_a_renewed_client_certificate_is_picked_up_without_a_restart(secure_etcd, tmp_path):
    cert, key = secure_etcd.pki.client("rotating", "sipcluster-node", expired=True)
    connection = EtcdConnection(secure_etcd.access(cert=str(cert)))
    with pytest.raises(EtcdAuthError, match="expired"):
        connection.run("get", lambda: connection.client().get("/tls/x"))
    # cert-manager writes the renewed pair over the old files.
    secure_etcd.pki.client("rotating", "sipcluster-node")
    wait_for(lambda: _works(connection), timeout=30, what="the renewed certificate in use")
    connection.close()


def _works(connection: EtcdConnection) -> bool:
    try:
        connection.run("get", lambda: connection.client().get("/tls/x"))
        return True
    except CoordinationError:
        return False


def test_an_expired_token_is_renewed_and_the_call_retried(secure_etcd):
    # The fixture's simple tokens live 3 s: idle past that, the client's token
    # is gone and etcd answers UNAUTHENTICATED.
    prefix = fresh_prefix()
    connection = EtcdConnection(secure_etcd.access())
    try:
        connection.run("put", lambda: connection.client().put(f"{prefix}/k", b"1"))
        first = connection.client()
        time.sleep(5)  # lets the token expire; nothing is asserted about timing
        value, _ = connection.run("get", lambda: connection.client().get(f"{prefix}/k"))
        assert value == b"1"
        assert connection.client() is not first  # built again, authenticated again
    finally:
        connection.close()


def test_tokens_lost_in_an_etcd_restart_are_renewed(secure_etcd):
    prefix = fresh_prefix()

    async def main():
        store = EtcdStore(secure_etcd.access())
        try:
            await store.put(f"{prefix}/k", b"1")
            secure_etcd.stop()
            secure_etcd.start()  # simple tokens live in etcd's memory only

            async def read():
                try:
                    return (await store.get(f"{prefix}/k")).value
                except CoordinationError:
                    return None
            with trio.fail_after(60):
                while await read() != b"1":
                    await trio.sleep(0.2)
        finally:
            store.close()

    trio.run(main)


def test_concurrent_first_workers_agree_on_one_random_secret(secure_etcd):
    prefix = fresh_prefix()
    results = []

    async def main():
        stores = [EtcdStore(secure_etcd.access()) for _ in range(4)]
        try:
            async def one(store):
                # As a worker does at start: a TLS handshake lost on a busy
                # machine is retried, the secret is still drawn once.
                with trio.fail_after(60):
                    results.append(await wait_for_secret(store, prefix, "nonce"))
            async with trio.open_nursery() as nursery:
                for store in stores:
                    nursery.start_soon(one, store)
            stored = await stores[0].get(secret_key(prefix, "nonce"))
            other = await wait_for_secret(stores[0], fresh_prefix(), "nonce")
        finally:
            for store in stores:
                store.close()
        return stored, other

    stored, other = trio.run(main)
    assert len(set(results)) == 1 and len(results[0]) == 32
    assert stored.value == results[0]
    assert other != results[0]  # another cluster (prefix) draws its own


def test_auth_failures_are_counted_apart_from_other_etcd_errors(secure_etcd):
    from cluster.observability.etcd import EtcdMetrics

    metrics = EtcdMetrics()
    errors = metrics.errors

    async def main():
        refused = EtcdStore(secure_etcd.access(password="rotated-elsewhere"), observer=metrics.client("users"))
        try:
            for _ in range(2):
                with pytest.raises(EtcdCredentialsRejected):
                    await refused.get("/tls/k")
        finally:
            refused.close()
        down = EtcdStore(f"https://127.0.0.1:{secure_etcd.port + 0}", ca_cert=str(secure_etcd.pki.ca),
                         timeout=1.0, observer=metrics.client("membership"))  # no client certificate
        try:
            with pytest.raises(CoordinationError):
                await down.get("/tls/k")
        finally:
            down.close()

    trio.run(main)
    assert errors.auth_snapshot() == {"users": 2}
    assert errors.snapshot()[("users", "get")] == 2
    assert errors.snapshot()[("membership", "get")] == 1
