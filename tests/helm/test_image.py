"""The Containerfile and its build context.

No container engine runs on the development machine or in CI, so the image
is not built here; these tests read the Containerfile and hold it to what
the chart relies on: two stages, only the virtualenv copied into the
runtime stage, a non-root numeric user equal to the chart's runAsUser, the
`sipcluster` entrypoint, a build context of the package sources only, and a
base image pinned by digest in every stage.
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
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?@sha256:[0-9a-f]{64}", default_image)
    assert builder[0][1].startswith("${PYTHON_IMAGE} ") and runtime[0][1].startswith("${PYTHON_IMAGE} ")


PINNED = re.compile(r"[\w.\-/:]+(:[\w.\-]+)?@sha256:[0-9a-f]{64}")
"""An image named with its content digest (a tag alongside is for readers)."""


def base_images(text: str) -> list[str]:
    """The image each FROM starts from, ``${ARG}``s replaced by the defaults
    of the ARGs declared before the first FROM (the ones FROM can see);
    a FROM naming an earlier stage is not an image and is left out."""
    text = re.sub(r"\\\n\s*", " ", text)
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    images = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op = words[0].upper()
        if op == "ARG" and not images and not stages:
            name, _, value = words[1].partition("=")
            defaults[name] = value
        elif op == "FROM":
            args = [w for w in words[1:] if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m[1] or m[2], ""), args[0])
            if image.lower() not in stages:
                images.append(image)
            if len(args) >= 3 and args[1].upper() == "AS":
                stages.add(args[2].lower())
    return images


def test_every_stage_starts_from_an_image_pinned_by_digest():
    images = base_images(CONTAINERFILE.read_text())
    assert len(images) == 2, images
    unpinned = [image for image in images if not PINNED.fullmatch(image)]
    assert unpinned == [], f"pin these by digest (see the Containerfile's header): {unpinned}"


def test_the_pin_check_sees_unpinned_and_indirect_images():
    pinned = "python:3.11-slim-bookworm@sha256:" + "ab" * 32
    assert base_images(f"ARG IMG={pinned}\nFROM ${{IMG}} AS a\nFROM a AS b\nFROM --platform=x ${{IMG}}\n") \
        == [pinned, pinned]
    assert [PINNED.fullmatch(i) is not None for i in base_images(
        "ARG IMG=python:3.11-slim-bookworm\nFROM $IMG AS a\nFROM debian@sha256:" + "0" * 64 + "\n"
        "FROM python:3.11@sha256:short\n")] == [False, True, False]


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
