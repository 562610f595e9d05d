"""Command line: `python -m engine ask DOCUMENT "QUESTION"`, `python -m engine library ...` and
`python -m engine setup`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from engine.config import ATTENTION_MODES, EngineConfig
from engine.errors import FolioError
from engine.events import CancelToken, Progress, ProgressPrinter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Folio engine command line.")
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a question about a whole document, streaming")
    ask.add_argument("document", help="a PDF or text/Markdown file, or @ID for a library document")
    ask.add_argument("question")
    _add_model_arguments(ask)
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--json", action="store_true", help="print one JSON object with the answer and stats")
    ask.add_argument("--no-cache", action="store_true",
                     help="neither use nor fill the document library's stored KV caches")

    library = commands.add_parser("library", help="the stored documents and their KV caches")
    verbs = library.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="documents, cache sizes and disk use")
    listing.add_argument("--json", action="store_true")
    add = verbs.add_parser("add", help="ingest a document: prefill it, build its index and store both")
    add.add_argument("document", help="a PDF or text/Markdown file")
    _add_model_arguments(add)
    add.add_argument("--max-new-tokens", type=int, default=256, help="answer room reserved in the context")
    remove = verbs.add_parser("remove", help="delete a document and its cache files")
    remove.add_argument("id", type=int)
    verbs.add_parser("path", help="print the folder where the library lives")
    budget = verbs.add_parser("budget", help="show or set the disk budget for caches (LRU eviction)")
    budget.add_argument("size", nargs="?", help="e.g. 50GiB or 500MB")

    commands.add_parser("setup", help="fetch and convert the default model (once)")
    return parser


def _add_model_arguments(ask: argparse.ArgumentParser) -> None:
    """The model and attention options shared by `ask` and `library add`."""
    defaults = EngineConfig()
    ask.add_argument("--model", default="default", help="'default', a model folder or a hub id")
    ask.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ask.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    ask.add_argument("--attention", default=defaults.attention, choices=ATTENTION_MODES,
                     help="retrieval (default), full, window-only, or retrieval with another key index")
    ask.add_argument("--top-k", type=int, default=defaults.top_k, help="keys retrieved per head and step")
    ask.add_argument("--n-sink", type=int, default=defaults.n_sink, help="first tokens kept in the static set")
    ask.add_argument("--n-window", type=int, default=defaults.n_window, help="last tokens kept in the static set")
    ask.add_argument("--search-effort", type=int, default=defaults.search_effort,
                     help="index search queue size (HNSW efSearch, IVF nprobe)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "setup":
            return _setup()
        if args.command == "library":
            from engine.library_cli import library_command

            return library_command(args)
        return _ask(args)
    except FolioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # invalid settings (EngineConfig validation)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return 130


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


def _setup() -> int:
    from engine.default_model import ensure_default_model

    path = ensure_default_model(ProgressPrinter())
    print(f"default model ready in {path}", file=sys.stderr)
    return 0


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(model=args.model, device=args.device, dtype=args.dtype, attention=args.attention,
                        n_sink=args.n_sink, n_window=args.n_window, top_k=args.top_k,
                        search_effort=args.search_effort, max_new_tokens=args.max_new_tokens,
                        temperature=getattr(args, "temperature", 0.0), top_p=getattr(args, "top_p", 1.0))


def _ask(args: argparse.Namespace) -> int:
    from engine.generate import Finished, TokenEvent
    from engine.ingest import read_document
    from engine.model import load_model
    from engine.session import DocumentSession
    from engine.store import Store

    config = config_from_args(args)
    progress = ProgressPrinter()
    use_store = not args.no_cache and config.attention != "full"  # full attention is never stored
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
            "dtype": str(loaded.dtype).removeprefix("torch."), "attention": config.attention,
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
