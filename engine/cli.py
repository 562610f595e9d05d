"""Command line: `python -m engine ask DOCUMENT "QUESTION"` and `python -m engine setup`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from engine.config import ATTENTION_MODES, EngineConfig
from engine.errors import FolioError
from engine.events import CancelToken, Progress


class ProgressPrinter:
    """Progress on stderr: one rewritten line on a terminal, a line per ~10% otherwise."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last: tuple[str, int] = ("", -1)

    def __call__(self, event: Progress) -> None:
        percent = int(100 * event.fraction)
        step = percent if self.tty else percent // 10 * 10
        if (event.stage, step) == self.last:
            return
        self.last = (event.stage, step)
        eta = f", ETA {event.eta_s:.0f} s" if event.eta_s is not None and event.done < event.total else ""
        line = f"{event.stage}: {event.done:,}/{event.total:,} {event.unit} ({percent}%{eta})"
        if self.tty:
            end = "\n" if event.done >= event.total else ""
            self.stream.write(f"\r\033[K{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def build_parser() -> argparse.ArgumentParser:
    defaults = EngineConfig()
    parser = argparse.ArgumentParser(prog="python -m engine", description="Folio engine command line.")
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a question about a whole document, streaming")
    ask.add_argument("document", help="a PDF or text/Markdown file")
    ask.add_argument("question")
    ask.add_argument("--model", default="default", help="'default', a model folder or a hub id")
    ask.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ask.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    ask.add_argument("--attention", default="full", choices=ATTENTION_MODES)
    ask.add_argument("--top-k", type=int, default=defaults.top_k, help="keys retrieved per head and step")
    ask.add_argument("--n-sink", type=int, default=defaults.n_sink, help="first tokens kept in the static set")
    ask.add_argument("--n-window", type=int, default=defaults.n_window, help="last tokens kept in the static set")
    ask.add_argument("--search-effort", type=int, default=defaults.search_effort,
                     help="index search queue size (HNSW efSearch, IVF nprobe)")
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--json", action="store_true", help="print one JSON object with the answer and stats")

    commands.add_parser("setup", help="fetch and convert the default model (once)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "setup":
            return _setup()
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


def _ask(args: argparse.Namespace) -> int:
    from engine.generate import Finished, TokenEvent
    from engine.ingest import read_document
    from engine.model import load_model
    from engine.session import DocumentSession

    config = EngineConfig(model=args.model, device=args.device, dtype=args.dtype, attention=args.attention,
                          n_sink=args.n_sink, n_window=args.n_window, top_k=args.top_k,
                          search_effort=args.search_effort, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p)
    progress = ProgressPrinter()
    document = read_document(args.document)  # fail on a bad file before loading any model
    load_started = time.perf_counter()
    loaded = load_model(config.model, config.device, config.dtype, progress)
    load_s = time.perf_counter() - load_started
    session = DocumentSession(loaded, document, config)
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
            "index_build_s": round(stats.index_build_s, 3), "model_load_s": round(load_s, 2),
            "keys_scanned_fraction": _scanned_fraction(session),
            **peak_memory(loaded.device),
        }, indent=2))
    else:
        print()
        print(f"[{stats.prompt_tokens:,} prompt tokens, prefill {stats.prefill_tokens_per_s:.0f} tok/s, "
              f"first token {stats.ttft_s:.1f} s, decode {stats.decode_tokens_per_s:.1f} tok/s]",
              file=sys.stderr)
    return 0
