"""Every configuration field does something (issue 19 part 6): each field in
``cluster.config``'s specs must be read by code outside ``config.py``.

"Read" means an attribute access ``<section>.<field>`` on a value that is
that section of the configuration: ``config.edge.rate_limit``,
``self.config.worker.t1``, ``w.t1`` after ``w = c.worker``, or ``cluster.etcd``
for a parameter annotated ``ClusterConfig``; or a public method of the
section class (``edge.advertised()``) that reads the field, called that way.
Validation in ``config.py`` is not a use: a field only checked there is a
promise nothing keeps.
"""

from __future__ import annotations

import ast
from pathlib import Path

from cluster.config import _SECTIONS, _SPECS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster" / "config.py"
CLASS_OF = {cls.__name__: section for section, cls in _SECTIONS.items()}

# Fields no code outside config.py reads yet, each with the reason. An entry
# that becomes read fails test_allow_list_names_only_real_unread_fields, so
# the list cannot outlive its reason.
ALLOWED_UNREAD: dict[str, str] = {}


def _sources() -> list[Path]:
    return [p for d in ("cluster", "nodes") for p in sorted((ROOT / d).rglob("*.py")) if p != CONFIG]


def _annotation_section(annotation: ast.expr | None) -> str | None:
    if annotation is None:
        return None
    text = annotation.value if isinstance(annotation, ast.Constant) else ast.unparse(annotation)
    if not isinstance(text, str):
        return None
    for name, section in CLASS_OF.items():
        if text == name or text.endswith("." + name) or text.startswith(name + " |"):
            return section
    return None


class _Reads(ast.NodeVisitor):
    """Section attribute reads in one module: (section, attribute name)."""

    def __init__(self, tree: ast.Module) -> None:
        self.aliases: dict[str, str] = {}
        self.reads: set[tuple[str, str]] = set()
        # Aliases first (``w = c.worker``; ``cluster: ClusterConfig``), anywhere in the module.
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                section = self._section_of(node.value)
                if section is not None:
                    self.aliases[node.targets[0].id] = section
            elif isinstance(node, ast.arg):
                section = _annotation_section(node.annotation)
                if section is not None:
                    self.aliases[node.arg] = section
        self.visit(tree)

    def _section_of(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Attribute) and node.attr in _SECTIONS:
            return node.attr
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        section = self._section_of(node.value)
        if section is not None:
            self.reads.add((section, node.attr))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant):
            section = self._section_of(node.args[0])
            if section is not None:
                self.reads.add((section, node.args[1].value))
        self.generic_visit(node)


def _methods_reading_fields() -> dict[tuple[str, str], set[str]]:
    """(section, public method) -> the fields it reads as ``self.<field>``."""
    tree = ast.parse(CONFIG.read_text())
    out: dict[tuple[str, str], set[str]] = {}
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef) or cls.name not in CLASS_OF:
            continue
        section = CLASS_OF[cls.name]
        for method in cls.body:
            if isinstance(method, ast.FunctionDef) and not method.name.startswith("_"):
                out[(section, method.name)] = {
                    n.attr for n in ast.walk(method)
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
                    and n.attr in _SPECS[section]}
    return out


def read_fields() -> set[str]:
    reads: set[tuple[str, str]] = set()
    for path in _sources():
        reads |= _Reads(ast.parse(path.read_text(), str(path))).reads
    methods = _methods_reading_fields()
    keys = {f"{section}.{name}" for section, name in reads if name in _SPECS[section]}
    for (section, method), fields in methods.items():
        if (section, method) in reads:
            keys |= {f"{section}.{name}" for name in fields}
    return keys


def test_every_configuration_field_is_read_outside_config():
    every = {spec.key for fields in _SPECS.values() for spec in fields.values()}
    unread = sorted(every - read_fields() - set(ALLOWED_UNREAD))
    assert not unread, f"configuration fields that no code reads: {unread}"


def test_allow_list_names_only_real_unread_fields():
    every = {spec.key for fields in _SPECS.values() for spec in fields.values()}
    assert set(ALLOWED_UNREAD) <= every
    assert not set(ALLOWED_UNREAD) & read_fields()


def test_the_walker_finds_reads_and_misses_unread_fields():
    # It must be able to fail: a module that reads one field only.
    source = ("def f(config, cluster: 'ClusterConfig'):\n"
              "    w = config.worker\n"
              "    return w.t1, config.edge.rate_limit, cluster.prefix, getattr(config.http, 'listen'),"
              " config.edge.advertised()\n")
    reads = _Reads(ast.parse(source)).reads
    assert {("worker", "t1"), ("edge", "rate_limit"), ("cluster", "prefix"), ("http", "listen"),
            ("edge", "advertised")} <= reads
    assert ("worker", "t2") not in reads
    assert _methods_reading_fields()[("edge", "advertised")] >= {"advertise", "listen"}
