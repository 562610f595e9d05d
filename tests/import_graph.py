"""The project's import graph, read from the source (AST: every import, at module level or inside a function), and
the rules it must keep. tests/test_import_graph.py checks the real tree and shows that each rule catches a break.

Rules:
- engine/ never imports app/, PySide6 or PyQt.
- Only app/backend.py and app/worker.py import the engine, and only names in `engine.__all__` (`from engine import X`).
- Nothing imports a private (_underscore) name from another module of the project.
- No import cycle, and no import from a lower layer into a higher one (LAYERS).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("engine", "app", "tests", "packaging")
QT_PACKAGES = ("PySide6", "PyQt5", "PyQt6", "shiboken6")
ENGINE_DOORS = ("app.backend", "app.worker")


def layer_of(module: str) -> int:
    """Lower layers never import higher ones: the engine's core, its front ends (CLI, benchmarks), the app's door,
    the rest of the app, its entry point; tests and packaging sit on top."""
    if module.startswith(("tests", "packaging")):
        return 5
    if module == "app.__main__":
        return 4
    if module == "app.backend":
        return 2
    if module.startswith("app"):
        return 3
    if module in ("engine.__main__",) or module.startswith(("engine.cli", "engine.bench")):
        return 1
    return 0


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # the project module it reaches (or an outside top-level package)
    names: tuple[str, ...]  # the names taken (from-imports); () for `import x`
    from_package_init: bool  # `from <package> import names` where names are not submodules
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
            modules[module_name(root, path)] = path
    return modules


def engine_exports(root: Path) -> dict[str, str]:
    """engine/__init__.py's `_EXPORTS` (public name -> defining module), read without importing the engine."""
    init = root / "engine" / "__init__.py"
    if not init.is_file():
        return {}
    for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets) and node.value is not None:
            return ast.literal_eval(node.value)
    return {}


def imports(root: Path) -> list[Import]:
    modules = project_modules(root)
    exports = engine_exports(root)
    found: list[Import] = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(name, alias.name, (), False, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source == "__future__":
                    continue
                plain = []
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:
                        found.append(Import(name, submodule, (), False, node.lineno))
                    elif source == "engine" and alias.name in exports:
                        found.append(Import(name, exports[alias.name], (alias.name,), True, node.lineno))
                    else:
                        plain.append(alias.name)
                if plain:
                    found.append(Import(name, source, tuple(plain), source in modules and
                                        modules[source].name == "__init__.py", node.lineno))
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each ("app/chat_view.py:12 imports engine.citations: ...")."""
    modules = project_modules(root)
    exports = engine_exports(root)
    problems: list[str] = []
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for imp in imports(root):
        where = f"{modules[imp.importer].relative_to(root)}:{imp.line}"
        top = _top(imp.target)
        if _top(imp.importer) == "engine" and (top == "app" or top in QT_PACKAGES):
            problems.append(f"{where} imports {imp.target}: the engine never imports the app or Qt")
        if _top(imp.importer) == "app" and top == "engine":
            if imp.importer not in ENGINE_DOORS:
                problems.append(f"{where} imports {imp.target}: only {', '.join(ENGINE_DOORS)} import the engine")
            elif not imp.from_package_init or any(n not in exports for n in imp.names):
                problems.append(f"{where} imports {imp.target}: the app's door takes only names in engine.__all__ "
                                "(`from engine import X`)")
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private and imp.target in modules:
            problems.append(f"{where} imports the private name(s) {', '.join(private)} from {imp.target}")
        target = imp.target if imp.target in modules else None
        if target and target != imp.importer:
            edges[imp.importer].add(target)
            if layer_of(target) > layer_of(imp.importer):
                problems.append(f"{where} imports {target}: a lower layer imports a higher one")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found
