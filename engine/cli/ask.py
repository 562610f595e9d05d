"""`python -m engine ask DOCUMENT|@ID "QUESTION" [--chat ID]`: stream the answer, or print one JSON object (--json).

Each ask is a turn of a chat kept in the library: a new chat, or with --chat the stored chat it continues.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from engine.cli.options import config_from_args
from engine.errors import FolioError
from engine.events import CancelToken, Progress, ProgressPrinter


def _scanned_fraction(session) -> float | None:
    """Mean fraction of offloaded keys the index searches scanned (None without retrieval)."""
    stats = getattr(session.cache, "stats", None)
    return round(stats.scanned_fraction, 5) if stats and stats.searches else None


def peak_memory(device) -> dict[str, float]:
    """Peak resident memory of this process and, on CUDA, peak device memory allocated (GiB)."""
    import resource

    import torch

    peaks = {"peak_process_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device.type == "cuda":
        peaks["peak_device_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return peaks


def ask_command(args: argparse.Namespace) -> int:
    from engine.cli.chat import open_document
    from engine.errors import StoreError
    from engine.generate import Finished, TokenEvent
    from engine.model import load_model
    from engine.session import DocumentSession
    from engine.store import Store

    config = config_from_args(args)
    progress = ProgressPrinter()
    if args.no_cache and args.chat is not None:
        raise FolioError("--chat continues a chat kept in the library, and --no-cache leaves the library out.",
                         "Drop --no-cache.")
    store, library_notice = None, None
    if args.document.startswith("@") or args.chat is not None:
        store = Store()  # the document or chat is in the library: without it there is nothing to ask about
    elif not args.no_cache:
        try:
            store = Store()  # the document's K/V (both attention modes share them) and chats
        except StoreError as error:  # a full disk, a damaged library: answer without it, and say so
            library_notice = f"library not used: {error}"
    ingest_started = time.perf_counter()
    document = open_document(args, store)  # fail on a bad file before loading any model
    ingest_s = time.perf_counter() - ingest_started
    for warning in document.warnings:  # e.g. a damaged PDF repaired with pages lost
        print(f"warning: {warning}", file=sys.stderr)
    load_started = time.perf_counter()
    loaded = load_model(config.model, config.device, config.dtype, progress, weights=config.weights,
                            cpu_weights=config.cpu_weights)
    load_s = time.perf_counter() - load_started
    session = DocumentSession(loaded, document, config, store)
    if library_notice:
        session.cache_notices.append(library_notice)
    chat = session.chat(args.chat)
    cancel = CancelToken()
    finished = None
    for event in chat.ask(args.question, cancel):
        if isinstance(event, Progress):
            progress(event)
        elif isinstance(event, TokenEvent) and not args.json:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None
    stats = finished.stats
    if args.json:
        print(json.dumps({
            "answer": finished.text, "model": loaded.name, "device": str(loaded.device),
            "dtype": str(loaded.dtype).removeprefix("torch."), "weights": loaded.weights,
            "cpu_weights": loaded.cpu_weights,
            "attention": session.attention.mode, "attention_reason": session.attention.reason,
            "document": str(document.source), "pages": document.pages, "document_warnings": list(document.warnings),
            "chat_id": chat.id, "turn": len(chat.turns), "chat_tokens": chat.tokens_used,
            "prompt_tokens": stats.prompt_tokens, "prefill_tokens": stats.prefill_tokens,
            "prefill_s": round(stats.prefill_s, 3), "prefill_tokens_per_s": round(stats.prefill_tokens_per_s, 1),
            "ttft_s": round(stats.ttft_s, 3), "new_tokens": stats.new_tokens,
            "decode_tokens_per_s": round(stats.decode_tokens_per_s, 2), "stop_reason": stats.stop_reason,
            "index_build_s": round(stats.index_build_s, 3), "index_wait_s": round(stats.index_wait_s, 3),
            "citation_baseline_s": round(stats.citation_baseline_s, 3),
            "model_load_s": round(load_s, 2),
            "keys_scanned_fraction": _scanned_fraction(session), "ingest_s": round(ingest_s, 3),
            "cached": session.cached, "cache_bytes": session.cache_bytes or None,
            "cache_save_s": round(session.cache_save_s, 3), "cache_notice": session.cache_notice,
            "chat_notice": "; ".join(chat.notices) or None,
            **peak_memory(loaded.device),
        }, indent=2))
    else:
        print()
        for notice in filter(None, [session.cache_notice, *chat.notices]):
            print(notice, file=sys.stderr)
        kept = f"chat {chat.id}, turn {len(chat.turns)} (continue with --chat {chat.id}); " if chat.id else ""
        print(f"[{kept}{stats.prompt_tokens:,} prompt tokens, prefill {stats.prefill_tokens_per_s:.0f} tok/s, "
              f"first token {stats.ttft_s:.1f} s, decode {stats.decode_tokens_per_s:.1f} tok/s]",
              file=sys.stderr)
    return 0
