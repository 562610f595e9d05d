"""The free-running fidelity set: real documents with questions, expected facts and planted needles.

`resources/fidelity/cases.json` lists the documents (text files beside it, copied unchanged from a Debian system,
each with its source and licence), their questions with the facts a right answer contains, and the needles: a
fact planted as its own paragraph at a depth of a document, with a question about it. The set is fixed; planting
is deterministic (the paragraph break nearest to the depth).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CASES_FILE = Path(__file__).resolve().parents[2] / "resources" / "fidelity" / "cases.json"


@dataclass(frozen=True)
class Question:
    """One question about a document; expect: the facts a right answer contains (case-insensitive); needle: the
    planted fact's name and depth (percent) for needle questions, else None."""

    text: str
    expect: tuple[str, ...]
    needle: str | None = None

    def passed(self, answer: str) -> bool:
        return all(fact.lower() in answer.lower() for fact in self.expect)


@dataclass(frozen=True)
class CaseDocument:
    """A document of the set, with its needles planted, and its questions (ordinary ones first)."""

    name: str
    text: str
    source: str
    licence: str
    questions: tuple[Question, ...]


def plant(text: str, fact: str, depth: float) -> str:
    """text with `fact` as its own paragraph at the paragraph break (blank line) nearest to depth (0..1) of it,
    indented like the line after it."""
    breaks = [i for i in range(len(text)) if text.startswith("\n\n", i)] or [len(text)]
    at = min(breaks, key=lambda i: abs(i - depth * len(text)))
    rest = text[at + 2 :]
    indent = rest[: len(rest) - len(rest.lstrip(" \t"))]
    return text[:at] + "\n\n" + indent + fact + text[at:]


def load_cases(path: Path = CASES_FILE, names: list[str] | None = None) -> list[CaseDocument]:
    """The documents of the set at `path` in the file's order (those in `names`, in that order, when given)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    needles = data.get("needles", {})
    documents = []
    for entry in data["documents"]:
        if names and entry["name"] not in names:
            continue
        text = (path.parent / entry["file"]).read_text(encoding="utf-8")
        questions = [Question(q["question"], tuple(q["expect"])) for q in entry["questions"]]
        for needle_name, depth in sorted(entry.get("needles", {}).items(), key=lambda item: item[1]):
            needle = needles[needle_name]
            text = plant(text, needle["fact"], depth / 100)
            questions.append(Question(needle["question"], tuple(needle["expect"]), f"{needle_name}@{depth}%"))
        documents.append(CaseDocument(entry["name"], text, entry["source"], entry["licence"], tuple(questions)))
    if names and len(documents) != len(set(names)):
        known = [entry["name"] for entry in data["documents"]]
        unknown = sorted(set(names) - {d.name for d in documents})
        raise SystemExit(f"unknown documents {unknown}; choose from {known}")
    return sorted(documents, key=lambda document: names.index(document.name)) if names else documents
