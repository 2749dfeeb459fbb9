"""Layering and wiring rules read from the source (STYLE §7, issue 16).

- Observability is passed in (observers, wrappers implementing the same
  protocol), never patched in: no module of ``cluster/observability`` (nor
  a node's ``metrics.py``) assigns or deletes an attribute of an object
  other than ``self``, or calls ``setattr``/``delattr``.
- ``cluster/`` is the lower layer: apart from the CLI, which starts nodes,
  it never imports ``nodes``.
- The worker's runtime (``nodes/worker/node.py``) is the I/O adapter of the
  sans-IO transaction user, its message path readable in one screen: at
  most 300 lines, importing none of the packages that make SIP decisions and
  reading no SIP header or method of a message (issue 16).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _attribute_targets(node: ast.AST) -> list[ast.Attribute]:
    if isinstance(node, (ast.Assign, ast.Delete)):
        targets = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    else:
        return []
    found = []
    for target in targets:
        for part in ast.walk(target):
            if isinstance(part, ast.Attribute) and isinstance(part.ctx, (ast.Store, ast.Del)):
                found.append(part)
    return found


def foreign_assignments(path: Path) -> list[str]:
    """``x.attr = ...`` / ``del x.attr`` with ``x`` other than ``self``, and
    ``setattr``/``delattr`` calls, as ``file:line: text``."""
    source = path.read_text()
    out = []
    for node in ast.walk(ast.parse(source, str(path))):
        for target in _attribute_targets(node):
            if not (isinstance(target.value, ast.Name) and target.value.id == "self"):
                out.append(f"{path.name}:{node.lineno}: {ast.get_source_segment(source, node)}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("setattr", "delattr"):
            out.append(f"{path.name}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return out


def imports_of(path: Path, package: str) -> list[str]:
    """Every import of ``package`` (or a module under it) in ``path``, as ``file:line``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == package or name.startswith(package + ".") for name in names):
            out.append(f"{path.name}:{node.lineno}")
    return out


def test_observability_assigns_no_attribute_of_another_object():
    modules = [*sorted((ROOT / "cluster" / "observability").rglob("*.py")),
               *sorted((ROOT / "nodes").glob("*/metrics.py"))]  # each node's own metrics
    assert len(modules) > 8
    found = [hit for path in modules for hit in foreign_assignments(path)]
    assert found == [], "observability must be passed in, not patched in:\n" + "\n".join(found)


def test_cluster_never_imports_nodes_except_the_cli():
    found = [hit for path in sorted((ROOT / "cluster").rglob("*.py"))
             if path != ROOT / "cluster" / "cli.py" for hit in imports_of(path, "nodes")]
    assert found == [], "cluster/ is the lower layer:\n" + "\n".join(found)


WORKER_ADAPTER = ROOT / "nodes" / "worker" / "node.py"
ADAPTER_LINES = 300

DECIDING = ("cluster.proxy", "cluster.registrar", "cluster.app", "cluster.auth", "cluster.defence",
            "cluster.tu.core", "cluster.tu.base", "cluster.tu.forwarding", "cluster.tu.cancelling")
"""Where SIP decisions are made: routing and forking, the registrar's rules,
the operator's application, digest checks, the defences, the TU's layers."""

SIP_FIELDS = frozenset((
    "method", "status", "uri", "via", "vias", "to", "from_", "headers", "header", "cseq", "contact",
    "contacts", "route", "routes", "record_route", "max_forwards", "expires", "body", "reason"))
"""Attributes through which code would look into a SIP message to decide."""

SIP_METHODS = frozenset(("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
                         "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"))


def sip_decisions(path: Path) -> list[str]:
    """Imports of the deciding packages, reads of a SIP field and SIP method
    names in ``path``, as ``file:line: what``."""
    tree = ast.parse(path.read_text(), str(path))
    out = [f"{hit}: imports {package}" for package in DECIDING for hit in imports_of(path, package)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in SIP_FIELDS:
            out.append(f"{path.name}:{node.lineno}: reads .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in SIP_METHODS:
            out.append(f"{path.name}:{node.lineno}: names {node.value}")
    return out


def test_the_worker_runtime_is_a_thin_adapter():
    lines = len(WORKER_ADAPTER.read_text().splitlines())
    assert lines <= ADAPTER_LINES, (
        f"nodes/worker/node.py has {lines} lines: split a concern out (wiring, link, standing, timer, "
        "registrations) rather than grow the message path past one screen")
    found = sip_decisions(WORKER_ADAPTER)
    assert found == [], "SIP decisions belong to cluster/tu and below, not the adapter:\n" + "\n".join(found)


def test_the_checks_see_what_they_look_for(tmp_path):
    # The rules above pass only because the code obeys them: the same
    # checks flag each form they forbid.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import nodes.worker\n"
        "from nodes.edge.node import EdgeNode\n"
        "from cluster import nodes_like\n"
        "def wire(node, app, handler):\n"
        "    self_like = node\n"
        "    node.etcd_latency = 1\n"
        "    app.handler_for = handler\n"
        "    node.stats.total += 1\n"
        "    del node.tracing\n"
        "    setattr(node, 'x', 1)\n"
        "class Own:\n"
        "    def __init__(self):\n"
        "        self.ok = 1\n"
        "        self.part.inner = 2\n")
    hits = foreign_assignments(sample)
    assert sorted(int(hit.split(":")[1]) for hit in hits) == [6, 7, 8, 9, 10, 14]
    assert [hit.rsplit(":", 1)[1] for hit in imports_of(sample, "nodes")] == ["1", "2"]
    deciding = tmp_path / "deciding.py"
    deciding.write_text(
        "from cluster.proxy.routing import split_hostport\n"
        "from cluster.tu import route_of\n"
        "def on(message, send):\n"
        "    if message.method == 'INVITE':\n"
        "        send(message.call_id)\n"
        "    import cluster.registrar.rules\n")
    assert [hit.split(": ", 1)[1] for hit in sip_decisions(deciding)] == [
        "imports cluster.proxy", "imports cluster.registrar", "reads .method", "names INVITE"]


TU_MODULE_LINES = 600
"""STYLE §5: a module of the transaction user over this is two concerns."""


def long_modules(directory: Path, limit: int) -> list[str]:
    """The modules in ``directory`` longer than ``limit`` lines, as ``name: lines``."""
    out = []
    for path in sorted(directory.glob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines >= limit:
            out.append(f"{path.name}: {lines}")
    return out


def test_the_transaction_user_modules_stay_under_600_lines():
    tu = ROOT / "cluster" / "tu"
    assert {"core.py", "forwarding.py", "cancelling.py"} <= {p.name for p in tu.glob("*.py")}
    found = long_modules(tu, TU_MODULE_LINES)
    assert found == [], "split a concern out of:\n" + "\n".join(found)


def test_the_size_check_sees_a_long_module(tmp_path):
    (tmp_path / "short.py").write_text("x = 1\n" * 599)
    (tmp_path / "long.py").write_text("x = 1\n" * 600)
    assert long_modules(tmp_path, TU_MODULE_LINES) == ["long.py: 600"]
