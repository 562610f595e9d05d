"""`python -m engine ask DOCUMENT|@ID "QUESTION"`: stream the answer, or print one JSON object (--json)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from engine.cli.options import config_from_args
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
    from engine.generate import Finished, TokenEvent
    from engine.ingest import read_document
    from engine.model import load_model
    from engine.session import DocumentSession
    from engine.store import Store

    config = config_from_args(args)
    progress = ProgressPrinter()
    use_store = not args.no_cache  # both attention modes share the stored K/V (engine.shared_kv)
    store = Store() if use_store or args.document.startswith("@") else None
    ingest_started = time.perf_counter()
    if args.document.startswith("@") and args.document[1:].isdigit():
        document = store.load_document(int(args.document[1:]))
    else:
        document = read_document(args.document)  # fail on a bad file before loading any model
    ingest_s = time.perf_counter() - ingest_started
    load_started = time.perf_counter()
    loaded = load_model(config.model, config.device, config.dtype, progress)
    load_s = time.perf_counter() - load_started
    session = DocumentSession(loaded, document, config, store if use_store else None)
    cancel = CancelToken()
    finished = None
    for event in session.ask(args.question, cancel):
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
            "dtype": str(loaded.dtype).removeprefix("torch."), "attention": session.attention.mode,
            "attention_reason": session.attention.reason,
            "document": str(document.source), "pages": document.pages,
            "prompt_tokens": stats.prompt_tokens, "prefill_tokens": stats.prefill_tokens,
            "prefill_s": round(stats.prefill_s, 3), "prefill_tokens_per_s": round(stats.prefill_tokens_per_s, 1),
            "ttft_s": round(stats.ttft_s, 3), "new_tokens": stats.new_tokens,
            "decode_tokens_per_s": round(stats.decode_tokens_per_s, 2), "stop_reason": stats.stop_reason,
            "index_build_s": round(stats.index_build_s, 3), "index_wait_s": round(stats.index_wait_s, 3),
            "model_load_s": round(load_s, 2),
            "keys_scanned_fraction": _scanned_fraction(session), "ingest_s": round(ingest_s, 3),
            "cached": session.cached, "cache_bytes": session.cache_bytes or None,
            "cache_save_s": round(session.cache_save_s, 3), "cache_notice": session.cache_notice,
            **peak_memory(loaded.device),
        }, indent=2))
    else:
        print()
        if session.cache_notice:
            print(session.cache_notice, file=sys.stderr)
        print(f"[{stats.prompt_tokens:,} prompt tokens, prefill {stats.prefill_tokens_per_s:.0f} tok/s, "
              f"first token {stats.ttft_s:.1f} s, decode {stats.decode_tokens_per_s:.1f} tok/s]",
              file=sys.stderr)
    return 0
