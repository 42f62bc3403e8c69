"""The shape of the package, checked from its source with the standard library's ``ast``.

Four rules over the import graph of ``vaultkit/`` (STYLE.md §1, architecture review 5.1):

(a) no import cycle between modules;
(b) no module imports a module of a higher layer (``LAYERS`` below, lowest first);
(c) no module imports an ``_underscored`` name or module from another top-level package
    (``vaultkit.X._y``, ``from vaultkit.X import _y``, ``from vaultkit.X.m import _y`` where the
    importer is not inside ``vaultkit.X``);
(d) no literal wire offset outside ``vaultkit/core/``: a ``b"\\xf6\\x56"`` constant, a slice of a
    header field (``[4:20]``, ``[20:52]``, ``[:52]``, ...), a constant index or slice in a function
    that also reads ``MAGIC``, or ``substr(..., 5, 16)`` with literal positions.

How each kind of import counts:

- A module-level import (also in a class body or a ``try``) is an edge for all rules.
- An import inside a function (a lazy import) is an edge for all rules too: it runs later, so it
  breaks no import, but it is still a dependency. A lazy cycle (``config`` <-> ``_vault``) is a cycle.
- An import under ``if TYPE_CHECKING:`` never runs, so it is not an edge for cycles (a, this is how a
  type-only back reference is meant to be written); it is one for the layers (b) and private names
  (c): naming a higher layer's type is still knowing about it.
- ``import a.b.c`` and ``from a.b import c`` count as one edge to ``a.b.c`` (when ``c`` is a module),
  not to the packages ``a`` and ``a.b`` that Python also initialises on the way: every module would
  otherwise depend on ``vaultkit/__init__.py``, the top of the house.
- ``vaultkit/__init__.py`` (the module ``vaultkit``) is the safe API's face and sits in the layer of
  ``_vault``. A top-level private module (``vaultkit._codec``) is the library's own and may be imported
  anywhere above its layer; a private name *inside* it (``vaultkit._vault._as_bytes``) may not.

Violations known today, which branches in progress remove, are listed in ``KNOWN_VIOLATIONS`` with
the reason and the branch. The test fails on any violation not listed, and on any listed one that is
gone (so the list only shrinks); the target is an empty list. A key has no line number, so one
entry covers every occurrence of the same text in the same module.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

import vaultkit

PACKAGE = "vaultkit"
SOURCE = Path(vaultkit.__file__).resolve().parent

#: Lowest first. A module may import from its own layer and the ones below. The key is the module's
#: top-level part under ``vaultkit`` ("" is ``vaultkit/__init__.py``).
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "errors",
        "_redact",
        "_files",
        "_offload",
        "_ddl",
    ),  # leaves: errors, secret holders, file and async I/O, DDL
    # search: the transforms and the planner's arithmetic, pure functions like the audience
    # normalisers; the index types that use them (vaultkit.sqla) sit above.
    ("core", "keys", "store", "_codec", "audiences", "passwords", "search"),
    ("_access", "audit", "config", "testing", "_scoped", "lifecycle"),
    (
        "_keyring",
        "_bulk",
        "_recorder",
        "_cipher",
        "_lifecycle",
        "_erasure",
        "_ledger",
        "_backups",
        "_requests",
    ),
    ("_vault", ""),  # the facade, and the package's face that re-exports it
    ("sqla", "arrow"),  # arrow: kernels over the vault and the column types' bindings
    ("rekey", "integrations", "research", "subjects"),  # research: exports on the arrow kernels
    ("cli", "__main__"),
)

#: Known violations today: key (as the test prints it) -> why it is there and which branch removes
#: it. Shrink to empty; a fixed violation must leave this list (the test says so).
KNOWN_VIOLATIONS: dict[str, str] = {
    # -- config <-> _vault (review D6): Vault.from_config builds the vault from config.vault_options();
    #    what is left is the deprecated shim vault_from_config (a lazy import of Vault), kept as the
    #    migration path for its callers and removed with it in 0.3.0.
    "cycle: vaultkit._vault -> vaultkit.config -> vaultkit._vault": "the deprecated vault_from_config shim; removed in 0.3.0",
    "upward: vaultkit.config (layer 2) imports vaultkit._vault (layer 4) [TYPE_CHECKING]": "the shim's return type; removed with it in 0.3.0",
}  # fmt: skip


# -- the import graph --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Edge:
    """One import: ``source`` imports ``target`` (a module), and from it ``names`` (may be empty)."""

    source: str
    target: str
    names: tuple[str, ...]
    line: int
    how: str  # "top", "lazy" (inside a function) or "typing" (under TYPE_CHECKING)


@dataclasses.dataclass(frozen=True)
class Violation:
    rule: str
    key: str  # stable (no line numbers): what KNOWN_VIOLATIONS lists
    where: str  # file:line, for the reader

    def __str__(self) -> str:
        return f"{self.key}    ({self.where})"


@dataclasses.dataclass(frozen=True)
class Module:
    name: str
    path: str
    is_package: bool
    tree: ast.Module


def load_modules(sources: Mapping[str, str]) -> dict[str, Module]:
    """Parse ``{relative path under vaultkit/: source}`` into modules by dotted name."""
    modules = {}
    for path, text in sources.items():
        parts = path.removesuffix(".py").split("/")
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join([PACKAGE, *parts])
        modules[name] = Module(name, f"vaultkit/{path}", is_package, ast.parse(text, path))
    return modules


def package_sources() -> dict[str, str]:
    return {
        str(p.relative_to(SOURCE)): p.read_text(encoding="utf-8")
        for p in sorted(SOURCE.rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(
    node: ast.AST, how: str = "top"
) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement below ``node`` with how it counts (see the module docstring)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, how
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_imports(ast.Module(body=[stmt], type_ignores=[]), "typing")
            for stmt in child.orelse:
                yield from _walk_imports(ast.Module(body=[stmt], type_ignores=[]), how)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk_imports(child, "typing" if how == "typing" else "lazy")
        else:
            yield from _walk_imports(child, how)


def _base(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def import_edges(modules: Mapping[str, Module]) -> list[Edge]:
    """The edges between modules of ``modules`` (imports of anything else are left out)."""
    edges = []
    for module in modules.values():
        for node, how in _walk_imports(module.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        edges.append(Edge(module.name, alias.name, (), node.lineno, how))
                continue
            base = _base(module, node)
            if base not in modules:
                continue
            names = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    edges.append(Edge(module.name, submodule, (), node.lineno, how))
                else:
                    names.append(alias.name)
            if names:
                edges.append(Edge(module.name, base, tuple(names), node.lineno, how))
    return edges


def _top(module: str) -> str:
    """The top-level part under ``vaultkit`` ("" for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _where(modules: Mapping[str, Module], edge: Edge) -> str:
    return f"{modules[edge.source].path}:{edge.line}"


# -- (a) cycles ------------------------------------------------------------------------------------


def _strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def _a_cycle(graph: Mapping[str, set[str]], members: list[str]) -> list[str]:
    """One concrete cycle through the first member of a component (breadth-first, shortest)."""
    start = members[0]
    inside = set(members)
    paths = {child: [start, child] for child in sorted(graph[start] & inside)}
    queue = list(paths)
    while queue:
        node = queue.pop(0)
        if node == start:
            return paths[node]
        for child in sorted(graph[node] & inside):
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError("a strongly connected component without a cycle")  # pragma: no cover


def find_cycles(modules: Mapping[str, Module], edges: Iterable[Edge]) -> list[Violation]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    lines: dict[tuple[str, str], Edge] = {}
    for edge in edges:
        if edge.how != "typing":
            graph[edge.source].add(edge.target)
            lines.setdefault((edge.source, edge.target), edge)
    violations = []
    for members in _strongly_connected(graph):
        cycle = _a_cycle(graph, members)
        steps = list(itertools.pairwise(cycle))
        where = ", ".join(f"{_where(modules, lines[s])} ({lines[s].how})" for s in steps)
        key = "cycle: " + " -> ".join(cycle)
        if len(members) > len(cycle) - 1:
            key += f" (component of {len(members)}: {', '.join(members)})"
        violations.append(Violation("cycle", key, where))
    return violations


# -- (b) layers ------------------------------------------------------------------------------------


def layer_of(module: str) -> int | None:
    top = _top(module)
    return next((n for n, layer in enumerate(LAYERS) if top in layer), None)


def find_upward(modules: Mapping[str, Module], edges: Iterable[Edge]) -> list[Violation]:
    violations = []
    seen = set()
    for edge in edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source is None or target is None:
            continue  # find_unplaced reports them
        if target > source and (edge.source, edge.target) not in seen:
            seen.add((edge.source, edge.target))
            key = (
                f"upward: {edge.source} (layer {source}) imports {edge.target} (layer {target})"
                + (" [TYPE_CHECKING]" if edge.how == "typing" else "")
                + (" [lazy]" if edge.how == "lazy" else "")
            )
            violations.append(Violation("layer", key, _where(modules, edge)))
    return violations


def find_unplaced(modules: Mapping[str, Module]) -> list[Violation]:
    return [
        Violation("layer", f"unplaced: {name} is in no layer of LAYERS", modules[name].path)
        for name in sorted(modules)
        if layer_of(name) is None
    ]


# -- (c) private names across packages -----------------------------------------------------------


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def find_private(modules: Mapping[str, Module], edges: Iterable[Edge]) -> list[Violation]:
    violations = []
    for edge in edges:
        if _top(edge.source) == _top(edge.target):
            continue
        below_top = edge.target.split(".")[2:]  # the parts under vaultkit.X
        private_module = next((p for p in below_top if _private(p)), None)
        private_names = [n for n in edge.names if _private(n)]
        if private_module is not None and not private_names:
            key = f"private: {edge.source} imports module {edge.target}"
            violations.append(Violation("private", key, _where(modules, edge)))
        for name in private_names:
            key = f"private: {edge.source} imports {edge.target}.{name}"
            violations.append(Violation("private", key, _where(modules, edge)))
    return violations


# -- (d) wire offsets outside core ---------------------------------------------------------------

MAGIC_BYTES = b"\xf6\x56"
#: Slices of header fields (core/wire.py's table) that are flagged wherever they occur.
HEADER_SLICES = frozenset({(4, 20), (20, 52), (52, 64)})
#: Offsets of the header's fields: a literal index or slice bound among these, in a function that
#: also reads MAGIC, is a header read by hand (``value[:2] == MAGIC``, ``value[2]``, ``[:20]``).
WIRE_OFFSETS = frozenset({2, 3, 4, 20, 52, 64})


def _const_int(node: ast.expr | None) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _literal_slice(node: ast.Subscript) -> tuple[int | None, int | None] | None:
    """``(start, stop)`` when the subscript is a slice or index of integer literals only."""
    index = node.slice
    if isinstance(index, ast.Slice):
        if index.step is not None:
            return None
        start, stop = _const_int(index.lower), _const_int(index.upper)
        if (index.lower is not None and start is None) or (
            index.upper is not None and stop is None
        ):
            return None
        if start is None and stop is None:
            return None
        return start, stop
    value = _const_int(index)
    return None if value is None else (value, value + 1)


def _names_magic(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id.endswith("MAGIC"))
        or (isinstance(n, ast.Attribute) and n.attr.endswith("MAGIC"))
        for n in ast.walk(node)
    )


def _scopes(tree: ast.Module) -> Iterator[ast.AST]:
    """The module's top-level statements and every function, each to be scanned on its own."""
    for stmt in tree.body:
        if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield stmt
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of ``scope`` without those of functions nested in it (scanned as their own)."""
    for child in ast.iter_child_nodes(scope):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield child
        yield from _own_nodes(child)


def find_offsets(modules: Mapping[str, Module]) -> list[Violation]:
    violations = []
    for module in modules.values():
        if _top(module.name) == "core":
            continue

        def flag(node: ast.AST, what: str, module: Module = module) -> None:
            key = f"offset: {module.name}: {what}"
            violations.append(Violation("offset", key, f"{module.path}:{node.lineno}"))

        for scope in _scopes(module.tree):
            near_magic = _names_magic(scope)
            for node in _own_nodes(scope):
                if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
                    if MAGIC_BYTES in node.value:
                        flag(node, f"the wire magic as a literal {node.value!r}")
                elif isinstance(node, ast.Subscript):
                    bounds = _literal_slice(node)
                    if bounds is None:
                        continue
                    text = ast.unparse(node)
                    literal = {b for b in bounds if b is not None}
                    if isinstance(node.slice, ast.Slice) and bounds in HEADER_SLICES:
                        flag(node, f"header field sliced by hand: {text}")
                    elif near_magic and literal & WIRE_OFFSETS:
                        flag(node, f"literal offset next to MAGIC: {text}")
                elif isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    if name.lower() in {"substr", "substring"} and any(
                        _const_int(a) is not None for a in node.args[1:]
                    ):
                        flag(node, f"SQL {name} with literal positions: {ast.unparse(node)}")
    return violations


# -- all rules -------------------------------------------------------------------------------------


def check(sources: Mapping[str, str]) -> list[Violation]:
    modules = load_modules(sources)
    edges = import_edges(modules)
    return [
        *find_cycles(modules, edges),
        *find_unplaced(modules),
        *find_upward(modules, edges),
        *find_private(modules, edges),
        *find_offsets(modules),
    ]


def _report(title: str, violations: Iterable[object]) -> str:
    lines = [f"  {v}" for v in violations]
    return f"{title} ({len(lines)}):\n" + "\n".join(lines)


def test_the_package_keeps_its_layers() -> None:
    """No cycle, no import up a layer, no private name across packages, no wire offset outside
    core, except the violations listed (with their reason) in KNOWN_VIOLATIONS."""
    violations = check(package_sources())
    found = {v.key: v for v in violations}
    new = [v for v in violations if v.key not in KNOWN_VIOLATIONS]
    gone = [key for key in KNOWN_VIOLATIONS if key not in found]
    print(_report("all violations found", violations))  # shown with -s or on failure
    message = []
    if new:
        message.append(_report("violations of the layering rules (fix them)", new))
    if gone:
        message.append(_report("fixed: remove these entries from KNOWN_VIOLATIONS", gone))
    assert not message, "\n\n".join(message)


#: Rooms of the target layout (STYLE.md §1) that h15-vault is creating; empty once it is merged.
PLANNED: frozenset[str] = frozenset()


def test_every_layer_names_existing_modules() -> None:
    """Each name in LAYERS is a module or package of vaultkit (no stale entry), or planned."""
    tops = {_top(name) for name in load_modules(package_sources())}
    assert {n for layer in LAYERS for n in layer} - PLANNED <= tops
    assert not PLANNED & tops, "a planned module exists now: remove it from PLANNED"


def conftest_imports(root: Path) -> list[str]:
    """``file:line`` of every import of a conftest module in the ``.py`` files under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[-1] == "conftest" for n in names):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def test_no_test_module_imports_a_conftest() -> None:
    """Helpers shared by tests live in tests/_servers.py (and the like), never in a conftest:
    pytest loads conftests itself, and importing one a second time runs it twice."""
    assert conftest_imports(Path(__file__).resolve().parents[1]) == []


# -- self-tests: the checker catches each kind of violation ---------------------------------------


def _keys(sources: Mapping[str, str], rule: str) -> list[str]:
    return sorted(v.key for v in check(sources) if v.rule == rule)


BASE = {
    "__init__.py": "",
    "errors.py": "class VaultkitError(Exception): ...\n",
    "core/__init__.py": "",
    "core/wire.py": "MAGIC = b'\\xf6\\x56'\ndef dek(v):\n    return v[4:20]\n",
    "keys/__init__.py": "from vaultkit.keys.local import decode\n",
    "keys/local.py": "def _secret(): ...\ndef decode(): ...\n",
    "keys/_kekwrap.py": "def wrap(): ...\n",
    "_vault.py": "from vaultkit.errors import VaultkitError\n",
    "config.py": "from vaultkit.keys.local import decode\n",
    "sqla/__init__.py": "from vaultkit._vault import VaultkitError\n",
    "cli/__init__.py": "",
    "cli/main.py": "from vaultkit.cli import keys\n",
    "cli/keys.py": "from vaultkit.cli._common import open_vault\n",
    "cli/_common.py": "from vaultkit.sqla import VaultkitError\ndef open_vault(): ...\n",
}


class TestTheChecker:
    def test_a_clean_house_has_no_violations(self) -> None:
        """The synthetic base follows every rule: the checker finds nothing in it."""
        assert check(BASE) == []

    def test_a_cycle_is_found_and_shown(self) -> None:
        """Two modules importing each other (one of them lazily) make a reported cycle."""
        sources = {
            **BASE,
            "_vault.py": "def from_config():\n    from vaultkit.config import build\n",
            "config.py": "from vaultkit._vault import Vault\n",
        }
        cycles = _keys(sources, "cycle")
        assert cycles == ["cycle: vaultkit._vault -> vaultkit.config -> vaultkit._vault"]
        (violation,) = (v for v in check(sources) if v.rule == "cycle")
        assert "vaultkit/_vault.py:2 (lazy)" in violation.where
        assert "vaultkit/config.py:1 (top)" in violation.where

    def test_a_longer_cycle_and_relative_imports(self) -> None:
        """A three-module cycle written with relative imports is found."""
        sources = {
            **BASE,
            "keys/a.py": "from . import b\n",
            "keys/b.py": "from .c import x\n",
            "keys/c.py": "from .a import y\nx = 1\n",
        }
        assert _keys(sources, "cycle") == [
            "cycle: vaultkit.keys.a -> vaultkit.keys.b -> vaultkit.keys.c -> vaultkit.keys.a"
        ]

    def test_a_type_checking_import_makes_no_cycle(self) -> None:
        """An import under TYPE_CHECKING never runs: no cycle (it still counts for layers)."""
        sources = {
            **BASE,
            "keys/a.py": "from vaultkit.keys import b\n",
            "keys/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vaultkit.keys import a\n"
            ),
        }
        assert _keys(sources, "cycle") == []

    def test_an_import_up_a_layer_is_found(self) -> None:
        """keys (layer 1) importing sqla, lazily or for types only, is an upward import."""
        sources = {
            **BASE,
            "keys/local.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from vaultkit.sqla import Encrypted\n"
                "def decode():\n    import vaultkit._vault\n"
            ),
        }
        assert _keys(sources, "layer") == [
            "upward: vaultkit.keys.local (layer 1) imports vaultkit._vault (layer 4) [lazy]",
            "upward: vaultkit.keys.local (layer 1) imports vaultkit.sqla (layer 5) [TYPE_CHECKING]",
        ]

    def test_a_module_in_no_layer_is_found(self) -> None:
        """A new top-level module must be given a layer."""
        assert _keys({**BASE, "newthing.py": ""}, "layer") == [
            "unplaced: vaultkit.newthing is in no layer of LAYERS"
        ]

    def test_a_private_name_across_packages_is_found(self) -> None:
        """``from vaultkit.keys.local import _secret`` and ``from vaultkit.keys import _kekwrap``
        in another package are found; inside keys they are fine."""
        sources = {
            **BASE,
            "config.py": "from vaultkit.keys.local import _secret\n",
            "sqla/__init__.py": "from vaultkit.keys import _kekwrap\nimport vaultkit.cli._common\n",
            "keys/other.py": "from vaultkit.keys.local import _secret\nfrom . import _kekwrap\n",
        }
        assert _keys(sources, "private") == [
            "private: vaultkit.config imports vaultkit.keys.local._secret",
            "private: vaultkit.sqla imports module vaultkit.cli._common",
            "private: vaultkit.sqla imports module vaultkit.keys._kekwrap",
        ]

    def test_a_private_name_of_a_top_level_module_is_found(self) -> None:
        """A private module at the top (``vaultkit._vault``) may be imported; its private names
        may not."""
        sources = {**BASE, "sqla/__init__.py": "from vaultkit._vault import _as_bytes, Vault\n"}
        assert _keys(sources, "private") == [
            "private: vaultkit.sqla imports vaultkit._vault._as_bytes"
        ]

    def test_wire_offsets_outside_core_are_found(self) -> None:
        """A hand slice of the DEK id, indexes next to MAGIC, the magic literal and a SQL substr
        with literal positions are found outside core, and none inside it."""
        sources = {
            **BASE,
            "sqla/__init__.py": (
                "from vaultkit.core.wire import MAGIC\n"
                "def classify(value):\n"
                "    if value[:2] != MAGIC or value[2] != 1:\n"
                "        return None\n"
                "    return value[4:20]\n"
                "def dek_ids(column, func):\n"
                "    return func.substr(column, 5, 16)\n"
                "def other(row):\n"
                "    return row[2], row[1:3]\n"
                "HEADER = b'\\xf6\\x56\\x01'\n"
            ),
        }
        assert _keys(sources, "offset") == [
            "offset: vaultkit.sqla: SQL substr with literal positions: func.substr(column, 5, 16)",
            "offset: vaultkit.sqla: header field sliced by hand: value[4:20]",
            "offset: vaultkit.sqla: literal offset next to MAGIC: value[2]",
            "offset: vaultkit.sqla: literal offset next to MAGIC: value[:2]",
            "offset: vaultkit.sqla: the wire magic as a literal b'\\xf6V\\x01'",
        ]

    def test_the_test_fails_on_a_new_violation(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The package test itself fails, listing the violation, when the tree has a new one."""
        sources = {**package_sources(), "keys/zz_upward.py": "import vaultkit.cli.main\n"}
        monkeypatch.setattr(f"{__name__}.package_sources", lambda: sources)
        with pytest.raises(AssertionError) as failure:
            test_the_package_keeps_its_layers()
        assert "upward: vaultkit.keys.zz_upward (layer 1) imports vaultkit.cli.main" in str(
            failure.value
        )

    def test_a_conftest_import_is_found(self, tmp_path: Path) -> None:
        """``from tests.providers.conftest import Server`` in a test module is found."""
        (tmp_path / "tests").mkdir()
        (tmp_path / "tests" / "test_x.py").write_text(
            "from tests.providers.conftest import Server\nimport tests.conftest\n"
        )
        assert conftest_imports(tmp_path / "tests") == ["tests/test_x.py:1", "tests/test_x.py:2"]

    def test_the_test_fails_on_a_stale_allowance(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An entry of KNOWN_VIOLATIONS that no longer occurs fails the test, named."""
        monkeypatch.setitem(KNOWN_VIOLATIONS, "cycle: vaultkit.nothing -> vaultkit.nothing", "x")
        with pytest.raises(AssertionError) as failure:
            test_the_package_keeps_its_layers()
        assert "remove these entries" in str(failure.value)
        assert "vaultkit.nothing" in str(failure.value)
