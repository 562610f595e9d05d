"""The README's promises a user or engineer acts on: its Python example runs, its layout table names every module."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_the_python_example_is_the_engines_own():
    """The example in engine/__init__.py's docstring and the README's are the same code."""
    example = engine.__doc__.split("::\n", 1)[1].split("\n\n", 2)
    indented = "\n\n".join(example[:2]).splitlines()
    assert "\n".join(line[4:] for line in indented).strip() == readme_python_example().strip()


def test_the_python_example_answers_a_question(tiny_model_dir, tmp_path):
    document = tmp_path / "manual.txt"
    document.write_text("The lighthouse on the northern cape was built in 1865 and first lit that autumn.\n" * 20)
    code = readme_python_example()
    assert 'EngineConfig()' in code and '"manual.pdf"' in code
    code = code.replace("EngineConfig()", f"EngineConfig(model={str(tiny_model_dir)!r}, max_new_tokens=8)")
    code = code.replace('"manual.pdf"', repr(str(document)))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    assert printed.getvalue(), "the example prints the streamed answer"


def layout_table() -> dict[str, set[str]]:
    """package -> the module names the README's layout table lists for it."""
    section = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w/]+)/` \| (.*) \|$", section, flags=re.M)
    return {package: set(re.findall(r"`([\w.]+?)(?:\.py|\.sh|\.spec)?`", names)) for package, names in rows}


def test_the_layout_table_lists_every_module():
    listed = layout_table()
    for package in ("engine", "engine/cli", "engine/index", "engine/bench", "app", "app/widgets", "app/sample",
                    "app/runtime"):
        modules = {p.stem for p in (ROOT / package).glob("*.py") if not p.stem.startswith("__")}
        assert package in listed, f"README layout has no row for {package}/"
        assert modules - listed[package] == set(), f"{package}/ modules missing from the README's layout table"
        assert listed[package] - modules == set(), f"the README's layout table names modules {package}/ lacks"


def test_the_readme_stays_short():
    assert len(README.splitlines()) <= 250
