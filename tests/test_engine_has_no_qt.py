"""engine/ must never import Qt: the app depends on the engine, never the other way round."""

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"
QT_PACKAGES = ("PySide6", "PyQt5", "PyQt6", "shiboken6")


def test_no_engine_source_imports_qt():
    offenders = []
    for source in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{source.name}: {n}" for n in names if n.split(".")[0] in QT_PACKAGES]
    assert not offenders, f"engine/ imports Qt: {offenders}"


def test_importing_every_engine_module_loads_no_qt():
    modules = sorted(
        ".".join(p.relative_to(ENGINE.parent).with_suffix("").parts)
        for p in ENGINE.rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {QT_PACKAGES!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ENGINE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"Qt modules loaded by engine: {result.stdout}"
