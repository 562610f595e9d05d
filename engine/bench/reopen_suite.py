"""reopen: first open of a document (ingest + prefill + index build + save + first token) vs reopen in a fresh process.

Both runs are separate `python -m engine ask ... --json` processes sharing a temporary library
(FOLIO_DATA_DIR). first_open_s = ingest_s + ttft_s of the first run (its ttft_s counts the document
prefill, index build and cache save); reopen_ttft_s = ttft_s of the second run (cache load and
verification included). Process wall clocks, model load included, are reported separately
(first_process_s, reopen_process_s) so nobody mistakes one for the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.bench.report import Report

TARGET_RATIO = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=4000, help="document length in tokens")
    parser.add_argument("--attention", default="retrieval")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1, help="first-open/reopen pairs, each in a fresh library")
    parser.add_argument("--omp-threads", type=int, default=0,
                        help="set OMP_NUM_THREADS for both processes (0: leave the environment as it is)")


def _ask(doc: Path, question: str, args: argparse.Namespace, env: dict) -> tuple[dict, float]:
    command = [sys.executable, "-m", "engine", "ask", str(doc), question, "--model", args.model, "--json",
               "--attention", args.attention, "--device", args.device, "--max-new-tokens", str(args.max_new_tokens)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"ask failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout), wall


def kv_bytes_per_token(config, kv_bytes: int = 2) -> int:
    """K and V of one token over all layers: 2 x layers x KV heads x head_dim x bytes."""
    text = config.get_text_config()
    n_kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * n_kv * head_dim * kv_bytes


def run(args: argparse.Namespace, report: Report) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from engine.bench.haystack import DEFAULT_NEEDLE, needle_document
    from engine.model import resolve_model_path

    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    per_token_kv = kv_bytes_per_token(AutoConfig.from_pretrained(path))
    for run_number in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="folio-reopen-") as work:
            doc = Path(work) / "document.txt"
            doc.write_text(needle_document(tokenizer, args.tokens, depth=0.5), encoding="utf-8")
            env = {**os.environ, "FOLIO_DATA_DIR": str(Path(work) / "library")}
            if args.omp_threads:
                env["OMP_NUM_THREADS"] = str(args.omp_threads)
            first, first_wall = _ask(doc, DEFAULT_NEEDLE.question, args, env)
            second, second_wall = _ask(doc, DEFAULT_NEEDLE.question, args, env)
            if not second["cached"]:
                raise RuntimeError(f"the reopen did not use the cache: {second.get('cache_notice')}")
            prefix_tokens = second["prompt_tokens"] - second["prefill_tokens"]
            first_open = first["ingest_s"] + first["ttft_s"]
            report.add(
                run=run_number, omp_threads=args.omp_threads or None, model=first["model"], device=first["device"],
                attention=args.attention,
                tokens=prefix_tokens, first_open_s=round(first_open, 3), reopen_ttft_s=second["ttft_s"],
                ratio=round(first_open / max(second["ttft_s"], 1e-6), 1),
                first_prefill_s=first["prefill_s"], first_index_build_s=first["index_build_s"],
                first_save_s=first["cache_save_s"], first_process_s=round(first_wall, 2),
                reopen_process_s=round(second_wall, 2), reopen_model_load_s=second["model_load_s"],
                cache_bytes=second["cache_bytes"], bytes_per_token=round(second["cache_bytes"] / prefix_tokens),
                kv_bytes_per_token=per_token_kv, same_answer=first["answer"] == second["answer"],
            )
    report.note(f"target: ratio >= {TARGET_RATIO} (reopen time to first token <= 1/{TARGET_RATIO} of the first open)")
    report.note("bytes_per_token: everything on disk (K/V + sampled prefill queries + index) / prefix tokens; "
                "kv_bytes_per_token: K and V alone (2 x layers x KV heads x head_dim x 2 bytes)")
