"""chat: time to first token of follow-up questions on a cached document, against the ways around them.

In one process, per run, on a needle document of --tokens tokens in a fresh temporary library:
- first_open: the document's first question (prefill, index build and save included);
- follow_up_N: questions 2..turns of the live chat (only their own tokens are prefilled);
- stored_first: a new session's first question on the stored document (its cache loaded from the library);
- reopened_follow_up: the stored chat, reopened in a new session, asked one more question: the whole history asked
  again with the document cached (its turns are prefilled again from the library, the document is not);
- scratch_history: that same last prompt (document + every turn + question) with nothing cached, as an app that
  resends the whole history to a stateless engine would pay.
Ratios are taken against the median follow-up of the same run. The static set's size is reported per turn:
the turns' K/V stay there (engine.cache), at kv_bytes_per_token per token.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from engine.bench.report import Report

TARGET_RATIO = 10
QUESTIONS = [
    "What is the secret launch code of the Varnholm lighthouse? Reply with the number.",
    "Which lighthouse did you name in your answer?",
    "Repeat the number you gave in your first answer.",
    "Is that number even or odd?",
    "Say it again, digit by digit.",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=3500, help="document length in tokens")
    parser.add_argument("--attention", default="retrieval")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--turns", type=int, default=3, help="questions in the live chat (2..5)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def run(args: argparse.Namespace, report: Report) -> None:
    import hashlib

    from engine.bench.haystack import needle_document
    from engine.chat import Chat
    from engine.config import EngineConfig
    from engine.generate import Finished
    from engine.ingest import Document
    from engine.model import load_model
    from engine.session import DocumentSession
    from engine.store import Store

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, args.device)
    config = EngineConfig(attention=args.attention, max_new_tokens=args.max_new_tokens, device=args.device)
    text = needle_document(loaded.tokenizer, args.tokens, depth=0.5)
    document = Document(text, "needle", None, hashlib.sha256(text.encode()).hexdigest())
    shape = loaded.shape
    per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * loaded.dtype.itemsize
    turns = max(2, min(args.turns, len(QUESTIONS) - 1))

    def ask(chat, question):
        return [e for e in chat.ask(question) if isinstance(e, Finished)][-1].stats

    for number in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="folio-chat-bench-") as work:
            store = Store(Path(work))
            session = DocumentSession(loaded, document, config, store=store)
            chat = session.chat()
            rows = []
            for turn, question in enumerate(QUESTIONS[:turns], start=1):
                stats = ask(chat, question)
                static = _static_tokens(session)
                rows.append(dict(step="first_open" if turn == 1 else f"follow_up_{turn}", turn=turn, stats=stats,
                                 static_tokens=static))
            stored = DocumentSession(loaded, document, config, store=store)
            rows.append(dict(step="stored_first", turn=1, stats=ask(stored.chat(), QUESTIONS[0]),
                             static_tokens=_static_tokens(stored)))
            reopened_session = DocumentSession(loaded, document, config, store=store)
            reopened = reopened_session.chat(chat.id)
            last = QUESTIONS[turns]
            rows.append(dict(step="reopened_follow_up", turn=turns + 1, stats=ask(reopened, last),
                             static_tokens=_static_tokens(reopened_session)))
            scratch_session = DocumentSession(loaded, document, config)  # no library: nothing cached
            scratch = Chat(scratch_session, _detached(chat.record), persist=False)
            rows.append(dict(step="scratch_history", turn=turns + 1, stats=ask(scratch, last),
                             static_tokens=_static_tokens(scratch_session)))
            store.close()
        follow = statistics.median(r["stats"].ttft_s for r in rows if r["step"].startswith("follow_up"))
        for row in rows:
            stats = row["stats"]
            report.add(run=number, model=loaded.name, device=str(loaded.device), attention=args.attention,
                       tokens=session.prefix_tokens, step=row["step"], turn=row["turn"],
                       prompt_tokens=stats.prompt_tokens, prefill_tokens=stats.prefill_tokens,
                       ttft_s=round(stats.ttft_s, 4), x_follow_up=round(stats.ttft_s / follow, 1),
                       new_tokens=stats.new_tokens, decode_tokens_per_s=round(stats.decode_tokens_per_s, 2),
                       static_tokens=row["static_tokens"])
    report.note(f"target: a follow-up's time to first token <= 1/{TARGET_RATIO} of the first question's "
                "(x_follow_up of first_open and stored_first >= 10)")
    report.note(f"kv_bytes_per_token: {per_token:,} on this model ({loaded.dtype}); the turns' K/V stay in the "
                "static set on the device. Llama-3-8B's shape (32 layers, 8 KV heads, head_dim 128, bf16): 131,072 "
                "bytes per token, 128 MiB per 1,000 turn tokens")


def _detached(record):
    """A copy of a chat record with the same turns and no library id: asking it leaves the original alone."""
    import dataclasses

    return dataclasses.replace(record, turns=list(record.turns), id=None)


def _static_tokens(session) -> int | None:
    """Tokens in the static set of layer 0 (sinks + window + the chat's turns), None without a retrieval cache."""
    layer = getattr(session.cache, "layers", [None])[0]
    return getattr(layer, "n_static", None)
