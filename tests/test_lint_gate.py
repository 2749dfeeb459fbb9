"""The README's test command (ops/dev.sh test, run by .ci/run) lints before
it tests: a ruff finding or a mypy error fails the run and pytest never
starts.

The real ruff and mypy run over a small tree laid out like the repository
(its pyproject.toml and ops/dev.sh copied); the ordering test gives dev.sh a
.venv whose programs only record that they were called.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def _tree(tmp_path: Path, venv: Path) -> Path:
    (tmp_path / "ops").mkdir()
    shutil.copy(ROOT / "ops" / "dev.sh", tmp_path / "ops" / "dev.sh")
    (tmp_path / "ops" / "tool.py").write_text('"""A script."""\n')
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in ("cluster", "nodes"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text('"""A package."""\n')
    (tmp_path / ".venv").symlink_to(venv)
    return tmp_path


def _dev(tree: Path, command: str) -> subprocess.CompletedProcess[str]:
    # mypy's cache trusts a file whose size and mtime (whole seconds) are
    # unchanged: the edits below keep the size and come within a second, so
    # each run starts without a cache.
    shutil.rmtree(tree / ".mypy_cache", ignore_errors=True)
    return subprocess.run(["bash", str(tree / "ops" / "dev.sh"), command], cwd=tree,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MYPY_CACHE_DIR": str(tree / ".mypy_cache")})


def test_lint_passes_a_clean_tree_and_fails_on_a_ruff_finding_or_a_type_error(tmp_path):
    tree = _tree(tmp_path, VENV)
    module = tree / "cluster" / "core.py"
    module.write_text("def double(x: int) -> int:\n    return 2 * x\n")
    clean = _dev(tree, "lint")
    assert clean.returncode == 0, clean.stdout + clean.stderr

    module.write_text("import os\n\n\ndef double(x: int) -> int:\n    return 2 * x\n")
    unused = _dev(tree, "lint")
    assert unused.returncode == 1
    assert "F401" in unused.stdout and "lint: ruff reported" in unused.stderr

    module.write_text("def double(x: int) -> str:\n    return 2 * x\n")
    mistyped = _dev(tree, "lint")
    assert mistyped.returncode == 1
    assert "[return-value]" in mistyped.stdout and "lint: mypy reported" in mistyped.stderr

    # The sans-IO core is strict: an unannotated function fails there only.
    (tree / "cluster" / "sip").mkdir()
    (tree / "cluster" / "sip" / "__init__.py").write_text("def parse(data):\n    return data\n")
    module.write_text("def double(x):\n    return 2 * x\n")
    strict = _dev(tree, "lint")
    assert strict.returncode == 1
    assert "cluster/sip/__init__.py" in strict.stdout and "[no-untyped-def]" in strict.stdout
    assert "cluster/core.py" not in strict.stdout


def _recorder(path: Path, log: Path, status: int) -> None:
    path.write_text(f'#!/bin/sh\necho "{path.name} $*" >> "{log}"\nexit {status}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_test_command_lints_before_pytest_and_stops_on_a_finding(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls"
    (tmp_path / "repo").mkdir()
    tree = _tree(tmp_path / "repo", venv)
    _recorder(venv / "bin" / "python", log, 0)
    _recorder(venv / "bin" / "mypy", log, 0)

    _recorder(venv / "bin" / "ruff", log, 1)
    failed = _dev(tree, "test")
    assert failed.returncode == 1, failed.stderr
    assert "lint: ruff reported" in failed.stderr
    calls = log.read_text().splitlines()
    assert calls[-1].startswith("ruff check")
    assert not any("-m pytest" in call for call in calls)

    log.unlink()
    _recorder(venv / "bin" / "ruff", log, 0)
    _recorder(venv / "bin" / "mypy", log, 1)
    failed = _dev(tree, "test")
    assert failed.returncode == 1 and "lint: mypy reported" in failed.stderr
    assert not any("-m pytest" in call for call in log.read_text().splitlines())

    log.unlink()
    _recorder(venv / "bin" / "mypy", log, 0)
    passed = _dev(tree, "test")
    assert passed.returncode == 0, passed.stderr
    programs = [call.split()[0] + (" pytest" if "-m pytest" in call else "")
                for call in log.read_text().splitlines()]
    assert programs[-3:] == ["ruff", "mypy", "python pytest"]


def test_lint_without_the_tools_says_to_install(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    result = _dev(_tree(tmp_path / "repo", venv), "lint")
    assert result.returncode == 1
    assert "run ops/dev.sh install" in result.stderr
