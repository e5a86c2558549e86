"""medgen's module-level imports form no cycle, and ``medgen.registry`` is a leaf.

The graph is built from the source (``ast``), not by importing: an edge ``a -> b`` is a
top-level ``import`` / ``from ... import`` statement of module ``a`` that names medgen module
``b`` (also inside top-level ``if`` / ``try`` / ``with`` blocks, but not inside
``if TYPE_CHECKING:``). Imports inside functions (lazy imports) are not edges.
``from medgen.x import y`` is an edge to ``medgen.x.y`` when that is a module, else to
``medgen.x``; a package counts as its ``__init__``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medgen"


def module_files() -> dict[str, Path]:
    """Every module under ``medgen/``: dotted name -> file (a package is its ``__init__.py``)."""
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run when the module is imported (not those in functions or classes)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level_imports(block)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            yield from _top_level_imports(node.body)


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is a medgen module (``None`` outside medgen)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def module_imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The medgen modules ``name`` imports at module level."""
    out: set[str] = set()
    for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:  # relative: resolve against the importing module's package
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        for target in targets:
            if target.split(".")[0] == "medgen":
                owner = _owner(target, mods)
                if owner is not None:
                    out.add(owner)
    return out


def import_graph() -> dict[str, set[str]]:
    """medgen module -> the medgen modules it imports at module level."""
    mods = module_files()
    return {name: module_imports(name, path, mods) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, and self-imports (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in graph[v]:
                    found.append(sorted(comp))
    return found


def _describe(comp: list[str], graph: dict[str, set[str]]) -> str:
    members = set(comp)
    edges = "; ".join(f"{a} -> {', '.join(sorted(graph[a] & members))}" for a in comp)
    return f"cycle of {len(comp)} module(s): {edges}"


# ------------------------------------------------------------------------------------------
# The checker itself, on small graphs and sources
# ------------------------------------------------------------------------------------------
def test_cycles_finds_loops_and_self_imports_only() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}, "b": set()}) == [["a"]]
    assert sorted(cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}})) == [["a", "b"], ["c", "d"]]


def test_module_imports_resolution(tmp_path: Path) -> None:
    mods = {"medgen": Path("__init__.py"), "medgen.pkg": tmp_path / "__init__.py",
            "medgen.pkg.sub": tmp_path / "sub.py", "medgen.pkg.sibling": tmp_path / "sibling.py",
            "medgen.other": tmp_path / "other.py"}
    src = tmp_path / "sub.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from medgen.pkg import sibling\n"          # a submodule: edge to it, not to the package
        "from medgen.pkg import name_in_init\n"     # a name of __init__: edge to the package
        "import medgen.other as o\n"
        "if TYPE_CHECKING:\n"
        "    from medgen import zoo\n"              # type-only: no edge
        "def f():\n"
        "    import medgen.nothing_here\n"          # lazy: no edge
        "try:\n"
        "    from . import sibling as s2\n"         # relative, inside try: edge
        "except ImportError:\n"
        "    pass\n")
    assert module_imports("medgen.pkg.sub", src, mods) == {"medgen.pkg.sibling", "medgen.pkg", "medgen.other"}


# ------------------------------------------------------------------------------------------
# medgen itself
# ------------------------------------------------------------------------------------------
def test_graph_covers_the_package() -> None:
    graph = import_graph()
    assert {"medgen", "medgen.registry", "medgen.config", "medgen.methods", "medgen.methods.ddpm"} <= set(graph)
    assert "medgen.methods.ddpm" in graph["medgen.methods"]  # the package imports its methods
    assert "medgen.config" in graph["medgen.train"]


def test_no_import_cycle() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "medgen has module-level import cycles (break them with a lazy import):\n" + "\n".join(
        _describe(c, graph) for c in found)


def test_registry_imports_nothing_from_medgen() -> None:
    tree = ast.parse((PACKAGE / "registry.py").read_text(encoding="utf-8"))
    named = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    named += [node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and (node.level or (node.module or "").split(".")[0] == "medgen")]
    assert not [n for n in named if n.split(".")[0] in ("medgen", ".")], named


def test_presets_package_does_not_import_config() -> None:
    graph = import_graph()
    assert graph["medgen.presets"] == set()
    assert not {m for m in graph["medgen.config"] if m.startswith("medgen.presets")}


def _fresh_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_registry_loads_no_other_medgen_module() -> None:
    out = _fresh_python("import sys, medgen.registry; "
                        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'medgen')))")
    assert out.split(",") == ["medgen", "medgen.registry"]


def test_lookup_on_an_empty_table_is_the_one_line_error() -> None:
    out = _fresh_python(
        "from medgen.registry import METHODS, UnknownNameError, lookup\n"
        "try:\n    lookup(METHODS, 'cddpm')\n"
        "except UnknownNameError as err:\n    print(err)\n")
    assert out == "unknown method 'cddpm' (known: none)"


def test_importing_each_package_fills_its_table() -> None:
    out = _fresh_python(
        "import medgen.methods, medgen.data, medgen.metrics\n"
        "from medgen import registry as r\n"
        "print(r.lookup(r.METHODS, 'cddpm').__name__, r.lookup(r.DATASETS, 'toy_shapes').__name__,"
        " r.lookup(r.PHANTOMS, 'knee').name, r.lookup(r.METRICS, 'psnr').__name__)")
    assert out == "ConditionalDDPM ToyShapes knee psnr"
