"""The transaction user is sans-IO: its modules import no event loop, socket,
message queue, etcd client or clock, and nothing of the worker's runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import cluster.tu

FORBIDDEN = {"trio", "zmq", "etcd3", "socket", "time", "nodes"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_transaction_user_imports_no_io():
    modules = sorted(Path(cluster.tu.__file__).parent.glob("*.py"))
    assert {m.name for m in modules} >= {"core.py", "outputs.py"}
    for module in modules:
        found = imported_roots(module) & FORBIDDEN
        assert not found, f"{module.name} imports {sorted(found)}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import time\n    from trio import sleep\n")
    assert imported_roots(sample) == {"time", "trio"}
