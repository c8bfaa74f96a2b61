"""The shape of the code base: no import cycles, no oversized files.

The layer contract itself is import-linter's (``[tool.importlinter]`` in pyproject.toml, run by
``scripts/test.sh`` before pytest); these tests add what it does not say, or say it without the tool.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "twotower"
MAX_LINES = 450


def module_name(path: Path, root: Path = SRC) -> str:
    """``src/twotower/serve/app.py`` -> ``twotower.serve.app``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], root: Path = SRC) -> set[str]:
    """The twotower modules ``path`` imports, anywhere in the file (a function-level import is still an edge).

    ``from pkg import name`` is an edge to ``pkg.name`` where that is a module, else to ``pkg``.
    """
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb level - 1 packages from this module's own package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import twotower.x.y` where y is a name, not a module
                target = target.rpartition(".")[0]
            if target and target != me:
                found.add(target)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports, for every ``.py`` file under ``package``."""
    root = package.parent
    files = {module_name(p, root): p for p in package.rglob("*.py")}
    return {name: imports_of(path, set(files), root) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted; none in a DAG."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
            visit(v)
    return sorted(found)


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    """The finder itself: a -> b at the top, b -> a inside a function (the old cli_model <-> cli_serve)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import g\n")
    (pkg / "b.py").write_text("def g():\n    from . import a\n")
    (pkg / "c.py").write_text("from pkg import a\n")
    graph = import_graph(pkg)
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_cycles():
    """No module reaches itself through imports, function-level ones included: a cycle means two modules
    that are really one, or a helper living in the wrong layer."""
    found = cycles(import_graph())
    assert not found, "import cycles (move the shared part down a layer): " + "; ".join(" <-> ".join(c) for c in found)


def test_no_file_under_src_is_over_the_limit():
    """Modules stay readable in one sitting: none over MAX_LINES lines (aim for 50-400)."""
    sizes = {
        str(p.relative_to(SRC)): len(p.read_bytes().splitlines())
        for p in SRC.rglob("*")
        if p.is_file() and p.suffix in (".py", ".c", ".h", ".pyx") and "__pycache__" not in p.parts
    }
    over = {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"files over {MAX_LINES} lines; split them by concern: {over}"


def test_the_default_install_builds_no_c():
    """Nothing under src/ is compiled at install time (no C/C++/Cython sources, no setup.py extensions)."""
    compiled = [str(p.relative_to(SRC)) for p in SRC.rglob("*") if p.suffix in (".c", ".cc", ".cpp", ".pyx")]
    assert not compiled, f"sources the default install would have to compile: {compiled}"
    setup_py = SRC.parent / "setup.py"
    assert not setup_py.exists() or "ext_modules" not in setup_py.read_text()
