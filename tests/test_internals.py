"""The dependencies still have the private parts the project relies on
(``cluster/internals.py``): a dependency upgrade that changes one fails here,
naming it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cluster.internals import INTERNALS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: f"{i.dependency}: {i.what[:40]}")
def test_dependency_still_has_it(internal):
    try:
        internal.check()
    except AssertionError as error:
        pytest.fail(f"{internal.dependency} changed {internal.what}, used in {internal.where}: {error}")


def test_every_entry_says_where_why_and_what_happens_without_it():
    for internal in INTERNALS:
        assert internal.why and internal.fallback
        modules = re.findall(r"(?:cluster|nodes)/\S+\.py", internal.where)
        assert modules and all((ROOT / module).is_file() for module in modules), internal.where


def test_the_span_check_fails_loudly_when_the_fields_go(monkeypatch):
    from cluster.observability import otlp_encode
    monkeypatch.setattr(otlp_encode, "_SPAN_FIELDS", otlp_encode._SPAN_FIELDS + ("renamed",))
    [spans] = [i for i in INTERNALS if i.dependency == "opentelemetry-sdk"]
    with pytest.raises(AssertionError, match="no longer keep"):
        spans.check()
