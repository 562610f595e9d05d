"""The import graph keeps its rules (tests/import_graph.py), and each rule catches a break."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.import_graph import QT_PACKAGES, violations

ROOT = Path(__file__).resolve().parents[1]


def test_the_project_keeps_its_import_rules():
    assert violations(ROOT) == []


def make_tree(root: Path, files: dict[str, str]) -> Path:
    base = {
        "engine/__init__.py": '_EXPORTS = {"EngineConfig": "engine.config", "read": "engine.reader"}\n',
        "engine/config.py": "class EngineConfig: ...\n",
        "engine/reader.py": "from engine.config import EngineConfig\n\ndef read(): ...\n\ndef _helper(): ...\n",
        "app/__init__.py": "",
        "app/backend.py": "from engine import EngineConfig, read\n",
        "app/worker.py": "from app.backend import EngineConfig\n",
        "app/main_window.py": "from app.worker import EngineConfig\n",
    }
    for name, text in {**base, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def test_a_clean_tree_passes(tmp_path):
    assert violations(make_tree(tmp_path, {})) == []


@pytest.mark.parametrize(("files", "words"), [
    # the engine imports the app inside a function (a top-level-only check missed this)
    ({"engine/reader.py": "def read():\n    from app.backend import EngineConfig\n"}, "never imports the app"),
    ({"engine/config.py": "import PySide6.QtCore\n"}, "never imports the app or Qt"),
    # a widget imports the engine
    ({"app/main_window.py": "from engine.config import EngineConfig\n"}, "only app.backend, app.worker import"),
    ({"app/chat_view.py": "def f():\n    import engine\n"}, "only app.backend, app.worker import"),
    # the door reaches past the public API
    ({"app/backend.py": "from engine.reader import read\n"}, "only names in engine.__all__"),
    ({"app/backend.py": "from engine import secret\n"}, "only names in engine.__all__"),
    # a private name crosses modules
    ({"engine/config.py": "from engine.reader import _helper\n"}, "private name(s) _helper"),
    # a cycle
    ({"engine/config.py": "def f():\n    from engine.reader import read\n"}, "import cycle"),
    # a lower layer imports a higher one
    ({"engine/cli.py": "", "engine/config.py": "import engine.cli\n"}, "lower layer imports a higher one"),
    ({"app/backend.py": "from engine import read\nfrom app.main_window import x\n"}, "lower layer"),
])
def test_each_rule_catches_a_break(tmp_path, files, words):
    problems = violations(make_tree(tmp_path, files))
    assert any(words in problem for problem in problems), problems


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_every_engine_module_loads_no_qt():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "engine").rglob("*.py")
                     if p.name != "__main__.py")
    loaded = run_python("import importlib, sys\n"
                        f"for m in {modules!r}: importlib.import_module(m)\n"
                        f"print([m for m in sys.modules if m.split('.')[0] in {QT_PACKAGES!r}])\n")
    assert loaded == "[]", f"Qt modules loaded by engine: {loaded}"


def test_the_public_api_resolves_and_the_door_imports_no_torch():
    """Every name in engine.__all__ exists; importing the app's door (which the GPU runtime's start-up and the frozen
    app's set-up import before torch may be imported) loads no torch."""
    assert run_python("import engine\nprint(all(getattr(engine, n) is not None for n in engine.__all__))") == "True"
    assert run_python("import sys, app.backend, app.frozen, app.settings\nprint('torch' in sys.modules)") == "False"
