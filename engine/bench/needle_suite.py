"""needle: does the answer keep a fact hidden at 10-90% depth of a document, per attention mode?

The default model reads ~--tokens tokens of English text (pydoc topics) with haystack.DEFAULT_NEEDLE
inserted at each depth and answers its question through DocumentSession (the app's path), once per
attention mode (EngineConfig.attention: full, retrieval, window, exact; flat/ivf/hnsw also accepted).
A case passes when the needle's answer is in the answer text. step_ms = decode_s / (new_tokens - 1)
from Finished.stats; prefill_s = document + question prefill; build_s = index build. Each mode
prefills the document itself (no reuse: correctness first).

    python -m engine.bench needle [--tokens 3500] [--depths 10,30,50,70,90] [--methods full,retrieval,...]
"""

from __future__ import annotations

import argparse
import hashlib
from collections import defaultdict
from typing import NamedTuple

from engine.bench.haystack import DEFAULT_NEEDLE, Needle, needle_document
from engine.bench.report import Report
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
    """One session's answer: Finished, the document prefix's tokens, keys scanned (None without searches)."""

    finished: Finished
    prefix_tokens: int
    scanned_fraction: float | None


def ask_once(loaded: LoadedModel, document: Document, config: EngineConfig, question: str) -> Answer:
    """A fresh DocumentSession answers `question` (document prefill, index build, decode)."""
    session = DocumentSession(loaded, document, config)
    finished = [event for event in session.ask(question) if isinstance(event, Finished)][-1]
    stats = getattr(session.cache, "stats", None)
    scanned = stats.scanned_fraction if stats is not None and stats.searches else None
    return Answer(finished, session.prefix_tokens, scanned)


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
            row = needle_row(method, config, depth, needle, ask_once(loaded, document, config, needle.question))
            results[method].append(row)
            report.add(**row)
    for method, rows in results.items():
        passed = sum(row["passed"] for row in rows)
        steps = [row["step_ms"] for row in rows if row["step_ms"] is not None]
        report.note(f"{method}: {passed}/{len(rows)} passed; mean step {sum(steps) / max(len(steps), 1):.1f} ms/token")
    report.note(f"needle {needle.fact!r}; pass = {needle.answer!r} in the answer; device cpu float32, "
                f"torch threads={args.threads}; max_new_tokens={args.max_new_tokens}")
