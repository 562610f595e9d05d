"""docs/reliability.md's fault matrix and the fault suite agree: every test of tests/test_faults_*.py is named in the
page, and every test the page names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reliability.md"


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_fault_test_is_in_the_matrix_and_every_named_test_exists():
    page = PAGE.read_text(encoding="utf-8")
    named = set(re.findall(r"`(?:tests/\w+\.py::)?(test_\w+)`", page))  # `tests/x.py::test_y` or `test_y`
    suite = {name for path in ROOT.glob("tests/test_faults_*.py") for name in _tests_in(path)}
    assert suite - named == set(), "fault tests missing from docs/reliability.md"
    everywhere = {name for path in ROOT.glob("tests/test_*.py") for name in _tests_in(path)}
    assert named - everywhere == set(), "docs/reliability.md names tests that do not exist"
    for file in set(re.findall(r"`(tests/test_\w+\.py)::", page)):
        assert (ROOT / file).is_file(), file
