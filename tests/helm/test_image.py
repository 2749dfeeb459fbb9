"""The Containerfile and its build context.

No container engine runs on the development machine or in CI, so the image
is not built here; these tests read the Containerfile and hold it to what
the chart relies on: two stages, only the virtualenv copied into the
runtime stage, a non-root numeric user equal to the chart's runAsUser, the
`sipcluster` entrypoint, and a build context of the package sources only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
VALUES = ROOT / "helm" / "sipcluster" / "values.yaml"


def containerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def test_containerfile_is_multi_stage_non_root_and_copies_only_the_venv():
    builder, runtime = containerfile_stages()
    assert builder[0][1].endswith("AS builder")
    assert runtime[0][1].endswith("AS runtime")
    assert any(op == "RUN" and "pip wheel" in arg for op, arg in builder)
    assert not any(op == "RUN" and "pip" in arg for op, arg in runtime)
    copies = [arg for op, arg in runtime if op == "COPY"]
    assert copies == ["--from=builder /opt/sipcluster /opt/sipcluster"]
    (user,) = [arg for op, arg in runtime if op == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    assert uid != 0 and gid != 0
    values = yaml.safe_load(VALUES.read_text())
    assert (values["podSecurityContext"]["runAsUser"], values["podSecurityContext"]["runAsGroup"]) == (uid, gid)
    assert [json.loads(arg) for op, arg in runtime if op == "ENTRYPOINT"] == [["sipcluster"]]
    default_image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", CONTAINERFILE.read_text(), re.M).group(1)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", default_image)
    assert builder[0][1].startswith("${PYTHON_IMAGE} ") and runtime[0][1].startswith("${PYTHON_IMAGE} ")


def test_build_context_holds_only_the_package_sources():
    ignore = (ROOT / ".containerignore").read_text()
    assert (ROOT / ".dockerignore").read_text() == ignore
    rules = [line for line in ignore.splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"
    included = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    builder = containerfile_stages()[0]
    sources = {src for op, arg in builder if op == "COPY" for src in arg.split()[:-1]}
    assert sources == included == {"pyproject.toml", "README.md", "LICENSE", "cluster", "nodes"}


def test_image_version_label_is_the_package_version():
    import cluster
    assert f"ARG VERSION={cluster.__version__}\n" in CONTAINERFILE.read_text()
