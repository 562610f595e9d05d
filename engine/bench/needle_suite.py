"""needle: does the answer keep a fact hidden at 10-90% depth of a document, per attention mode?

The default model reads ~--tokens tokens of English text (pydoc topics) with haystack.DEFAULT_NEEDLE
inserted at each depth and answers its question through DocumentSession (the app's path), once per
attention mode (EngineConfig.attention: full, retrieval, window, exact; flat/ivf/hnsw also accepted).
A case passes when the needle's answer is in the answer text. step_ms = decode_s / (new_tokens - 1)
from Finished.stats; prefill_s = document + question prefill; build_s = index build. Each mode
prefills the document itself (no reuse: correctness first).

--sources also ranks each answer's sources as the app does (DocumentSession.rank_passages, top 5 shown): before,
by plain shares of the answer's attention, and after, against the document's citation baseline
(engine.citation_baseline; baseline_s: computing it). src_before/src_after: the rank (1 = first) of the source
holding the needle's sentence, empty when none does; src_retrieved: the same by plain shares of the keys beyond the
static set alone (first --n-sink, last --n-window prefix tokens: what retrieval's sources were built from before its
trace held the static keys). The "all" rows give the fraction of answers whose top-1 / top-3 sources hold it, over
the correct answers and over all.

    python -m engine.bench needle [--tokens 3500] [--depths 10,30,50,70,90] [--methods full,retrieval,...]
                                  [--sources]
"""

from __future__ import annotations

import argparse
import hashlib
from collections import defaultdict
from typing import NamedTuple

from engine.bench.haystack import DEFAULT_NEEDLE, Needle, needle_document
from engine.bench.report import Report
from engine.citations import Passage
from engine.config import EngineConfig
from engine.generate import Finished
from engine.ingest import Document
from engine.model import LoadedModel, set_threads
from engine.session import DocumentSession

METHODS = ("full", "retrieval", "window", "exact")
EFFORT_NAME = {"retrieval": "queue", "hnsw": "efSearch", "ivf": "nprobe"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--tokens", type=int, default=3500, help="document length in tokens (3500)")
    parser.add_argument("--depths", default="10,30,50,70,90", help="needle depths in percent")
    parser.add_argument("--methods", default=",".join(METHODS), help="attention modes, comma list")
    parser.add_argument("--n-sink", type=int, default=128)
    parser.add_argument("--n-window", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--attention-share", type=float, default=EngineConfig.attention_share,
                        help="the retrieval budget's share of attention (0: a fixed --top-k)")
    parser.add_argument("--effort", type=int, default=EngineConfig.search_effort, help="index search effort")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0 = all cores)")
    parser.add_argument("--sources", action="store_true",
                        help="also rank each answer's sources before and after the citation baseline")


def text_document(text: str, title: str) -> Document:
    """An in-memory Document (no file) for `text`."""
    return Document(text=text, title=title, source=None, sha256=hashlib.sha256(text.encode()).hexdigest())


def method_param(config: EngineConfig) -> str:
    """The knobs that define a mode, as a short string for the table."""
    if config.attention == "full":
        return ""
    static = f"sink={config.n_sink},window={config.n_window}"
    if config.attention == "window":
        return static
    effort = f",{EFFORT_NAME[config.attention]}={config.search_effort}" if config.attention in EFFORT_NAME else ""
    share = f",share={config.attention_share:g}" if config.attention_share else ""
    return f"top_k={config.top_k}{share}{effort}"


class Answer(NamedTuple):
    """One session's answer: Finished, the document prefix's tokens, keys scanned (None without searches), and the
    session (for its sources)."""

    finished: Finished
    prefix_tokens: int
    scanned_fraction: float | None
    session: DocumentSession


def ask_once(loaded: LoadedModel, document: Document, config: EngineConfig, question: str,
             sources: bool = False) -> Answer:
    """A fresh DocumentSession answers `question` (document prefill, index build, decode; with `sources`, the
    citation baseline first and the decode steps traced, as the app answers)."""
    session = DocumentSession(loaded, document, config)
    finished = [event for event in session.ask(question, sources=sources) if isinstance(event, Finished)][-1]
    stats = getattr(session.cache, "stats", None)
    scanned = stats.scanned_fraction if stats is not None and stats.searches else None
    return Answer(finished, session.prefix_tokens, scanned, session)


def needle_rank(passages: list[Passage], needle: Needle) -> int | None:
    """The rank (1 = first) of the first passage holding the needle's sentence, or None."""
    return next((rank for rank, p in enumerate(passages, start=1) if needle.fact in p.text), None)


def source_columns(answer: Answer, needle: Needle) -> dict:
    """The needle's rank among the answer's sources before (plain shares) and after (against the citation baseline,
    found before the answer as the app does: baseline_s, part of its time to first token), and by plain shares of
    the keys beyond the static set alone (src_retrieved: what retrieval's sources were built from before its trace
    held the static sinks and window)."""
    session = answer.session
    steps = session.attention_steps(answer.finished)
    before = session.rank_passages(steps, question_specific=False)
    first, end = session.config.n_sink, session.prefix_tokens - session.config.n_window
    beyond = [[(p, w) for p, w in step if first <= p < end] for step in steps]
    retrieved = session.rank_passages(beyond, question_specific=False)
    return {"src_retrieved": needle_rank(retrieved, needle), "src_before": needle_rank(before, needle),
            "src_after": needle_rank(session.rank_passages(steps), needle),
            "baseline_s": answer.finished.stats.citation_baseline_s}


def source_summary(method: str, rows: list[dict]) -> list[dict]:
    """Per method, over the correct answers and over all: the fraction whose top-1 / top-3 sources hold the needle,
    before and after the baseline."""
    summary = []
    for over, chosen in (("correct", [r for r in rows if r["passed"]]), ("all", rows)):
        row = {"method": method, "param": rows[0]["param"], "depth": "all", "over": over, "answers": len(chosen)}
        for when in ("retrieved", "before", "after"):
            ranks = [r[f"src_{when}"] for r in chosen]
            for top in (1, 3):
                hits = sum(rank is not None and rank <= top for rank in ranks)
                row[f"top{top}_{when}"] = hits / len(chosen) if chosen else None
        summary.append(row)
    return summary


def needle_row(method: str, config: EngineConfig, depth: int, needle: Needle, answer: Answer) -> dict:
    """One table row of a (method, depth) case."""
    finished = answer.finished
    stats = finished.stats
    step_ms = stats.decode_s / (stats.new_tokens - 1) * 1e3 if stats.new_tokens > 1 else None
    return {
        "method": method, "param": method_param(config), "tokens": answer.prefix_tokens, "depth": depth,
        "passed": needle.answer.lower() in finished.text.lower(), "prefill_s": stats.prefill_s,
        "build_s": stats.index_build_s, "step_ms": step_ms, "new_tokens": stats.new_tokens,
        "scanned_fraction": answer.scanned_fraction, "answer": " ".join(finished.text.split())[:60],
    }


def run(args: argparse.Namespace, report: Report) -> None:
    from engine.model import load_model

    set_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    loaded = load_model(args.model, device="cpu", dtype="float32")
    needle = DEFAULT_NEEDLE
    results: dict[str, list[dict]] = defaultdict(list)
    for depth in depths:
        document = text_document(needle_document(loaded.tokenizer, args.tokens, depth / 100, needle), f"needle {depth}")
        for method in methods:
            config = EngineConfig(model=args.model, device="cpu", dtype="float32", attention=method,
                                  n_sink=args.n_sink, n_window=args.n_window, top_k=args.top_k,
                                  attention_share=args.attention_share,
                                  search_effort=args.effort, max_new_tokens=args.max_new_tokens)
            answer = ask_once(loaded, document, config, needle.question, sources=args.sources)
            row = needle_row(method, config, depth, needle, answer)
            if args.sources:
                row |= source_columns(answer, needle)
            results[method].append(row)
            report.add(**row)
    for method, rows in results.items():
        passed = sum(row["passed"] for row in rows)
        steps = [row["step_ms"] for row in rows if row["step_ms"] is not None]
        report.note(f"{method}: {passed}/{len(rows)} passed; mean step {sum(steps) / max(len(steps), 1):.1f} ms/token")
    if args.sources:
        for method, rows in results.items():
            for row in source_summary(method, rows):
                report.add(**row)
        report.note("sources: src_before/src_after = rank of the needle's passage among the top-5 sources by plain "
                    "attention share / by excess share over the citation baseline; src_retrieved: by plain shares of "
                    "the keys beyond the static set (n_sink, n_window) alone; top1/top3 = fraction of answers whose "
                    "first / first three sources hold it")
    report.note(f"needle {needle.fact!r}; pass = {needle.answer!r} in the answer; device cpu float32, "
                f"torch threads={args.threads}; max_new_tokens={args.max_new_tokens}")
