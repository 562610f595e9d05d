"""Long test documents from real English text (the Python docs that ship with every Python),
optionally with a "needle" fact hidden at a given depth."""

from __future__ import annotations

import ast
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Needle:
    fact: str
    question: str
    answer: str  # what a correct reply must contain (case-insensitive)


DEFAULT_NEEDLE = Needle(
    fact="The secret launch code of the Varnholm lighthouse is 7351.",
    question="What is the secret launch code of the Varnholm lighthouse? Reply with the number.",
    answer="7351",
)


@cache
def english_text() -> str:
    """About 290K tokens of English prose: the pydoc topic pages of the running Python (~113K tokens),
    then the standard library's docstrings (stdlib_docstrings())."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n\n" + stdlib_docstrings()


@cache
def stdlib_docstrings() -> str:
    """The docstrings (over 200 characters) of the standard library's top-level modules and their classes and
    functions, in file order: ~178K more tokens of English, for documents longer than the pydoc topics."""
    docs = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    docs.append(doc)
    return "\n\n".join(docs)


def filler_text(tokenizer: PreTrainedTokenizerBase, n_tokens: int) -> str:
    """The first ~n_tokens tokens of english_text(), cut at a paragraph boundary."""
    text = english_text()
    ids = tokenizer(text[: n_tokens * 8], add_special_tokens=False)["input_ids"][:n_tokens]
    cut = tokenizer.decode(ids)
    return cut[: cut.rfind("\n\n")] if "\n\n" in cut else cut


def needle_document(
    tokenizer: PreTrainedTokenizerBase, n_tokens: int, depth: float, needle: Needle = DEFAULT_NEEDLE
) -> str:
    """~n_tokens of filler with needle.fact inserted as its own paragraph at `depth` (0..1)."""
    paragraphs = filler_text(tokenizer, n_tokens).split("\n\n")
    at = round(depth * len(paragraphs))
    return "\n\n".join([*paragraphs[:at], needle.fact, *paragraphs[at:]])
