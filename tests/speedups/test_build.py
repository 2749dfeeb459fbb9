"""The compiled modules: built, in use, clean under -Wall -Wextra, and
optional (an install without a C compiler gives the pure-Python package)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from cluster import speedups

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "cluster" / "speedups").glob("*.c"))
COMPILER = shutil.which("gcc") or shutil.which("cc")


def test_each_c_source_is_a_module_in_use_unless_pure_python_is_asked_for():
    """CI builds with a compiler (ops/dev.sh installs gcc and the headers):
    there, a module that failed to build or import fails this test instead
    of leaving the suite on the pure-Python path unnoticed."""
    assert SOURCES
    names = {source.stem.lstrip("_") for source in SOURCES}
    assert set(speedups.in_use()) == names
    if speedups.PURE_PYTHON:
        assert not any(speedups.in_use().values())
        return
    assert COMPILER is not None, "the suite runs where the compiled path can be built"
    for source in SOURCES:
        importlib.import_module(f"cluster.speedups.{source.stem}")
    assert all(speedups.in_use().values()), speedups.in_use()


def test_pure_python_is_read_from_the_environment():
    code = "from cluster import speedups; print(speedups.PURE_PYTHON, speedups.in_use())"
    for value, pure in (("1", True), ("0", False), ("", False)):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "SIPCLUSTER_PURE_PYTHON": value}, check=True).stdout
        assert out.startswith(str(pure)), out
        if pure:
            assert "True" not in out.split(" ", 1)[1]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_c_sources_compile_without_warnings(source):
    assert COMPILER is not None
    include = sysconfig.get_paths()["include"]
    result = subprocess.run([COMPILER, "-fsyntax-only", "-O2", "-Wall", "-Wextra", "-Werror", "-I", include,
                             str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_build_without_a_c_compiler_installs_the_pure_python_package(tmp_path):
    """``pip install`` on a machine without a compiler: CC=/bin/false makes
    every compile fail; the wheel still builds, with one warning per module
    and no compiled module in it, and the package runs pure Python."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for package in ("cluster", "nodes"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "CC": "/bin/false", "HOME": str(Path.home())},
        timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "was not built" in line]
    assert len(warnings) == len(SOURCES), warnings
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cluster/speedups/__init__.py" in names and not [n for n in names if n.endswith(".so")]
    zipfile.ZipFile(wheel).extractall(tmp_path / "installed")
    out = subprocess.run([sys.executable, "-c", "from cluster import speedups; print(speedups.__file__, speedups.in_use())"],
                         cwd=tmp_path / "installed", capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "installed")}).stdout
    assert out.startswith(str(tmp_path / "installed")) and "True" not in out and "edge" in out, out
