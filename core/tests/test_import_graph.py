"""No import circles among machinery's modules.

The graph is built with :mod:`ast` from ``core/src/machinery``: an arrow for every import that
runs, at module level *and* inside functions (a lazy import is still an arrow: it only moves
the loop from import time to call time), and to the packages of what it imports (Python runs
``machinery.wire``'s ``__init__`` before ``machinery.wire.gotypes``). Imports under
``if TYPE_CHECKING:`` are annotations and do not run; they are not counted.

:data:`ALLOWED` would list arrows that still point back up, each with its reason and the module
that must change to remove it; it is empty. The test fails on any circle, and also when an
allowed arrow is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

import machinery

SRC = Path(machinery.__file__).resolve().parent

#: Arrows that close a circle, kept until the module that holds them is restructured (none left).
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module, *, in_functions: bool) -> list[ast.Import | ast.ImportFrom | ast.Call]:
    """Every import statement that can run (at module level, and in functions when
    ``in_functions``), and every ``importlib.import_module("<constant>")`` call; not the
    ``if TYPE_CHECKING:`` bodies."""
    found: list[ast.Import | ast.ImportFrom | ast.Call] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if not in_functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(*, in_functions: bool = True) -> dict[str, set[str]]:
    """Module -> the machinery modules it imports when it runs (only at import time unless
    ``in_functions``)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    modules = {name for name, _ in files}
    graph: dict[str, set[str]] = {}
    for (name, is_package), path in files.items():
        package = name if is_package else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8")), in_functions=in_functions):
            if isinstance(node, ast.Call):
                target = node.args[0]
                assert isinstance(target, ast.Constant)
                if target.value in modules:
                    deps.add(str(target.value))
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        deps.add(full)
                    elif base in modules:
                        deps.add(base)
        # Importing ``a.b.c`` runs ``a.b``'s __init__ first, unless the importer is inside ``a.b``
        # (then that package is already being imported).
        own = _ancestors(name)
        for dep in list(deps):
            deps.update(p for p in _ancestors(dep) if p not in own)
        deps.discard(name)
        graph[name] = deps
    return graph


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_the_graph_sees_lazy_imports_and_packages() -> None:
    graph = import_graph()
    assert "machinery.wire.codec" in graph["machinery.signature"]
    assert "machinery.wire" in graph["machinery.progress"]  # importing wire.gotypes runs wire's __init__
    assert "machinery.worker" in graph["machinery.server"]  # Server.new_worker's import, in a function
    assert "machinery.interfaces" not in graph["machinery.progress"]  # only under TYPE_CHECKING


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_among_machinery_modules() -> None:
    graph = import_graph()
    for (src, dst), reason in ALLOWED.items():
        assert dst in graph.get(src, set()), f"{src} -> {dst} is gone: remove it from ALLOWED ({reason})"
        graph[src].discard(dst)
    found = cycles(graph)
    assert not found, "import circles: " + " | ".join(_describe(graph, c) for c in found)


def test_module_level_imports_form_no_circle_at_all() -> None:
    """At import time there is no circle, not even through the allowed arrows (they are all
    inside functions)."""
    assert not cycles(import_graph(in_functions=False))


def test_the_process_pools_child_program_is_named_not_imported() -> None:
    """The children's entry point sits above the worker and the pool (it loads the app and
    builds a Server): the pool names it, and no machinery module imports it."""
    import pkgutil

    from machinery import pool, pool_child

    assert pkgutil.resolve_name(pool.CHILD_MAIN) is pool_child.child_main
    graph = import_graph()
    assert not [m for m, deps in graph.items() if "machinery.pool_child" in deps]
    assert "machinery.pool" in graph["machinery.pool_child"]
    assert "machinery.cli" not in graph["machinery.cli_ops"]
