"""Shared fixtures: a real etcd per module for tests that need one."""

from __future__ import annotations

import pytest

from tests.support.etcd import etcd_fixture, secure_etcd_fixture

etcd_server = pytest.fixture(scope="module")(etcd_fixture)

secure_etcd = pytest.fixture(scope="module")(secure_etcd_fixture)
