"""The layer rules of ops/guide/architecture.md hold: the table there is
read, and every module of each row is checked against its "never import"
column (imports anywhere in the module, nested ones too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "ops" / "guide" / "architecture.md"


def _rules() -> list[tuple[list[str], list[str]]]:
    rows = []
    for line in GUIDE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        modules = re.findall(r"`([^`]+)`", cells[0])
        never = [n.strip() for n in cells[1].split(",") if n.strip()]
        rows.append((modules, never))
    return rows


def _files(spec: str) -> list[Path]:
    path = ROOT / spec
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imports(path: Path, package: tuple[str, ...] | None = None) -> set[str]:
    tree = ast.parse(path.read_text())
    if package is None:
        package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                module = ".".join(base + ([node.module] if node.module else []))
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _forbidden(imported: str, never: str) -> bool:
    return imported == never or imported.startswith(never + ".")


def test_the_guide_has_the_table():
    rules = _rules()
    assert len(rules) >= 8
    for modules, never in rules:
        for spec in modules:
            assert _files(spec) and all(p.exists() for p in _files(spec)), spec
        assert never


@pytest.mark.parametrize("modules,never", _rules(), ids=lambda v: ",".join(v) if isinstance(v, list) else v)
def test_layer_never_imports(modules, never):
    offences = []
    for spec in modules:
        for path in _files(spec):
            for imported in _imports(path):
                for rule in never:
                    if _forbidden(imported, rule):
                        offences.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert offences == []


def test_the_check_sees_nested_and_relative_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("from ..link import zmq_trio\n\ndef f():\n    import trio\n    from time import monotonic\n")
    found = _imports(sample, ("cluster", "sip"))
    assert "trio" in found and "time" in found
    assert _forbidden("cluster.link.zmq_trio", "cluster.link") and "cluster.link.zmq_trio" in found

