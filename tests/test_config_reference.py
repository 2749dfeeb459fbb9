"""The operations guide's configuration reference is generated from the config
class; it must never drift from the code (regenerate with
`.venv/bin/python -m cluster.config --reference > ops/guide/configuration.md`)."""

from pathlib import Path

from cluster.config import reference_markdown

GUIDE = Path(__file__).resolve().parents[1] / "ops" / "guide" / "configuration.md"


def test_configuration_reference_matches_the_code():
    assert GUIDE.read_text() == reference_markdown(), (
        "ops/guide/configuration.md is stale: regenerate it with "
        "`python -m cluster.config --reference > ops/guide/configuration.md`")
