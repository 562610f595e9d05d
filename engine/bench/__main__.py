"""`python -m engine.bench <suite> [--json-out FILE] [suite options]`.

Each suite is a module of engine.bench exposing `add_arguments(parser)` and `run(args, report)`;
rows go into an engine.bench.report.Report, printed as a table and optionally written as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.bench.report import Report

SUITES: dict[str, tuple[str, str]] = {  # name -> (module, one-line description)
    "index": ("engine.bench.index_suite", "recall@100 vs keys scanned per index, and build vs prefill time"),
    "reopen": ("engine.bench.reopen_suite", "reopening a saved document vs prefilling it again"),
    "chat": ("engine.bench.chat_suite", "follow-up questions on a cached document vs the first question and resending"),
    "decode": ("engine.bench.decode_suite", "one decode step's attention per method at equal recall"),
    "needle": ("engine.bench.needle_suite", "needle-in-a-haystack passes per attention mode"),
    "fidelity": ("engine.bench.fidelity_suite", "teacher-forced top-1 agreement and KL vs full attention"),
    "freerun": ("engine.bench.freerun_suite", "free-running greedy answers per method vs full attention's"),
    "budget": ("engine.bench.budget_suite", "an attention-following retrieval budget against fixed top-k, per step"),
    "memory": ("engine.bench.gpu_suite", "peak device memory and time per token at long context (GPU check)"),
    "cards": ("engine.bench.cards_suite", "which catalog model fits which GPU, computed by the fit check"),
    "fingerprint": ("engine.bench.fingerprint_suite", "the model identity's cost at open: first open, later opens"),
    "fuzz": ("engine.bench.fuzz_suite", "mutated PDFs and texts through read_document: only the project's own errors"),
    "profile": ("engine.bench.profile_suite", "where a decode token's time and a reopen's fixed costs go"),
    "peers": ("engine.bench.peers_suite", "Folio against llama.cpp on the same GGUF and documents"),
    "cpu_work": ("engine.bench.cpu_work_suite", "the CPU's work per token for Llama-3-8B's shape at 128K"),
}


def main(argv: list[str] | None = None) -> int:
    """Only the chosen suite's module is imported, so a suite runs where only its own dependencies are installed
    (the GPU check's memory suite needs no PDF or SQLite libraries)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m engine.bench", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="suite", required=True, metavar="suite")
    modules = {}
    for name, (module_name, summary) in SUITES.items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        if name in argv[:1]:
            module = modules[name] = importlib.import_module(module_name)
            sub.description = module.__doc__
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            sub.add_argument("--json-out", metavar="FILE", help="also write the rows as JSON to FILE")
            module.add_arguments(sub)
    args = parser.parse_args(argv)
    report = Report(args.suite)
    try:
        modules[args.suite].run(args, report)
    finally:
        if report.rows:
            report.print_table()
            if args.json_out:
                report.write_json(args.json_out)
                print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
