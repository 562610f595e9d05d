"""profile: where one decode token's time goes on the default path, and where a reopen's fixed costs go.

--part decode: the default model answers a question about a document through DocumentSession (the app's path),
once per attention mode, the document prefilled before. One answer of --max-new-tokens tokens is timed by the wall
clock (decode_ms_per_token, from Finished.stats), then the same answer again under cProfile. The profile's
functions are grouped: the weights' matmuls (torch linear), attention (sdpa, or the retrieval hook's compiled step),
the index search, the other torch ops (norms, RoPE, activations, embedding), sampling, text decoding, and the Python
around them (transformers' modules and the engine's loop). Rows: ms per token per group under the profiler, and its
share; the profiler's own overhead is the difference to the wall clock (profiled_ms_per_token).

--part reopen: a fresh process per run opens a stored document and answers (the reopen suite's setting), with its
fixed costs timed inside: interpreter and imports, model load, store open, the session (tokenizing the prompt), the
cache load (its sha256 verification apart), the first token (question prefill, first index search, which loads the
compiled kernels), and the app's "ready" (DocumentSession.prepare: what the window's "cached — ready" waits for).

    python -m engine.bench profile --part decode|reopen [--tokens 4000] [--runs 5] [--json-out F]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.bench.report import Report
from engine.config import EngineConfig

GROUPS = (  # (group, substrings of "file:function" that put a profiled function in it), first match wins
    ("index search", ("graph_search", "qgraph_search", "search_offloaded", "index/parallel", "over_heads")),
    ("attention", ("scaled_dot_product_attention", "cpu_decode.py", "retrieval.py", "partial_attention",
                   "sdpa_attention_forward", "merge_attention_states")),
    ("weights' matmuls", ("built-in method torch._C._nn.linear", "method 'linear'", "cpu_weights.py")),
    ("sampling", ("generate.py:sample", "argmax", "multinomial")),
    ("text decoding", ("IncrementalText", "tokenization", "tokenizers", "method 'decode'")),
    ("other torch ops", ("built-in method", "method '")),
)
OTHER = "python around them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", choices=("decode", "reopen", "weights"), default="decode")
    parser.add_argument("--model", default="default")
    parser.add_argument("--cpu-weights", default=EngineConfig.cpu_weights, help="decode: EngineConfig.cpu_weights")
    parser.add_argument("--document", default="", help="decode: a document file (default: resources/sample.md)")
    parser.add_argument("--methods", default="full,retrieval", help="decode: attention modes")
    parser.add_argument("--rope-scale", type=float, default=1.0,
                        help="decode: stretch the model's RoPE linearly by this much, for a document past its trained "
                        "context (as the peers suite's long rows do)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--tokens", type=int, default=4000, help="reopen: document length in tokens")
    parser.add_argument("--attention", default="retrieval", help="reopen: attention mode")
    parser.add_argument("--runs", type=int, default=5, help="reopen: fresh-process reopens")
    parser.add_argument("--top", type=int, default=12, help="decode: also list the top functions (0: none)")
    parser.add_argument("--compare-threads", default="2/1,1/1,1/2",
                        help="decode: also time whole answers with these decode threads, torch/search (search: a "
                        "retrieval step's heads), alternating ('' none)")
    parser.add_argument("--compare-shares", default="",
                        help="decode, retrieval: also time answers at these attention shares on the same prepared "
                        "document, alternating; SHARE or SHARE:CAP (a budget_cap in keys), e.g. 0.9,0.9:1000,0 (0: a "
                        "fixed top-k)")
    parser.add_argument("--repeats", type=int, default=3, help="decode: answers per thread count; weights: per format")
    parser.add_argument("--formats", default=",".join(WEIGHT_FORMATS), help="weights: float32 first, then others")
    parser.add_argument("--profile-formats", default="", help="weights: also profile one answer of each of these "
                        "formats (comma list): rows of ms per token per group, and the top functions")


def group_of(key: tuple[str, int, str]) -> str:
    """The group of a pstats function key (file, line, name)."""
    text = f"{key[0]}:{key[2]}"
    for group, needles in GROUPS:
        if any(needle in text for needle in needles):
            return group
    return OTHER


def grouped_times(profile: cProfile.Profile) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """(seconds of own time per group, [(own seconds, function)] of the top functions)."""
    stats = pstats.Stats(profile).stats  # key -> (calls, primitive calls, tottime, cumtime, callers)
    groups: dict[str, float] = {}
    top = []
    for key, (_, _, own, _, _) in stats.items():
        group = group_of(key)
        groups[group] = groups.get(group, 0.0) + own
        top.append((own, f"{Path(key[0]).name}:{key[1]} {key[2]} [{group}]"))
    return groups, sorted(top, reverse=True)


def _decode_part(args: argparse.Namespace, report: Report) -> None:
    import torch

    from engine.bench.gemma import stretched_rope_overrides
    from engine.bench.needle_suite import text_document
    from engine.config import EngineConfig
    from engine.model import load_model, resolve_model_path
    from engine.session import DocumentSession

    torch.set_num_threads(args.threads)
    path = Path(args.document) if args.document else Path(__file__).resolve().parents[2] / "resources" / "sample.md"
    document = text_document(path.read_text(encoding="utf-8"), path.stem)
    loaded = load_model(args.model, "cpu", "float32", cpu_weights=args.cpu_weights,
                        config_overrides=stretched_rope_overrides(resolve_model_path(args.model), args.rope_scale))
    question = "Who was the first head keeper of the lighthouse, and when did he serve?"
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        config = EngineConfig(attention=method, max_new_tokens=args.max_new_tokens, decode_threads=args.threads)
        session = DocumentSession(loaded, document, config)
        list(session.prepare())

        _answer(session, question)  # warm: the compiled kernels, the allocator
        plain = _answer(session, question)
        variants = [v for v in args.compare_threads.split(",") if v]
        per_variant: dict[str, list[float]] = {v: [] for v in variants}
        answers: dict[str, list[int]] = {}
        for _ in range(args.repeats if variants else 0):  # alternating, one answer each
            for variant in variants:
                torch_threads, _, search_threads = variant.partition("/")
                session.config = dataclasses.replace(config, decode_threads=int(torch_threads))
                _set_search_threads(session, int(search_threads or 1))
                finished = _answer(session, question)
                per_variant[variant].append(finished.stats.decode_s)
                answers[variant] = finished.token_ids
        session.config = config
        _set_search_threads(session, 1)
        _compare_shares(session, question, plain, args, report, method)
        for variant, times in per_variant.items():
            steps = max(plain.stats.new_tokens - 1, 1)
            report.add(method=method, prompt_tokens=plain.stats.prompt_tokens,
                       group=f"decode, torch/search threads {variant}",
                       same_answer=answers[variant] == plain.token_ids, **_per_token(times, steps))
        profile = cProfile.Profile()
        profiled = _answer(session, question, profile)
        tokens = max(profiled.stats.new_tokens - 1, 1)
        groups, top = grouped_times(profile)
        total = sum(groups.values()) or 1.0
        wall_ms = 1e3 / plain.stats.decode_tokens_per_s if plain.stats.decode_tokens_per_s else float("nan")
        profiled_ms = profiled.stats.decode_s * 1e3 / tokens
        search = getattr(session.cache, "stats", None)  # retrieval: what its searches scanned and retrieved
        retrieval_columns = {} if not (search and search.searches) else {
            "scanned_fraction": round(search.scanned_fraction, 5),
            "retrieved_per_search": round(search.retrieved_per_search, 1)}
        for group in [g for g, _ in GROUPS] + [OTHER]:
            seconds = groups.get(group, 0.0)
            report.add(method=method, prompt_tokens=plain.stats.prompt_tokens, group=group,
                       ms_per_token=round(seconds * 1e3 / tokens, 3), share=round(seconds / total, 4),
                       decode_ms_per_token=round(wall_ms, 2), profiled_ms_per_token=round(profiled_ms, 2),
                       new_tokens=plain.stats.new_tokens, same_answer=plain.token_ids == profiled.token_ids,
                       **retrieval_columns)
        if args.top:
            print(f"top functions by own time ({method}, {tokens} decode steps):")
            for own, name in top[: args.top]:
                print(f"  {own * 1e3 / tokens:8.3f} ms/token  {name}")
    report.note("ms_per_token: the group's own time under cProfile from the first answer token to the last, per "
                "decode step; decode_ms_per_token: the wall clock of the same answer's decode without the profiler; "
                "profiled_ms_per_token: with it (the difference is the profiler's overhead)")


def _compare_shares(session, question: str, plain, args: argparse.Namespace, report: Report, method: str) -> None:
    """Rows "decode, attention share X[:CAP]": answers alternating between --compare-shares on the same indexes
    (RetrievalCache.use_search_settings), each with the keys its searches scanned and retrieved; the default's
    settings are restored after."""
    shares = [x for x in args.compare_shares.split(",") if x]
    cache = session.cache
    if not shares or not hasattr(cache, "use_search_settings"):
        return
    default = cache.settings
    times: dict[str, list[float]] = {share: [] for share in shares}
    searched = {share: [0, 0, 0, 0] for share in shares}  # keys scanned, indexed, retrieved; searches
    answers: dict[str, list[int]] = {}
    for _ in range(args.repeats):
        for share in shares:
            value, _, cap = share.partition(":")
            cache.use_search_settings(dataclasses.replace(default, attention_share=float(value),
                                                          budget_cap=int(cap or default.budget_cap)))
            before = _counts(cache.stats)
            finished = _answer(session, question)
            searched[share] = [total + now - then for total, now, then in
                               zip(searched[share], _counts(cache.stats), before, strict=True)]
            times[share].append(finished.stats.decode_s)
            answers[share] = finished.token_ids
    cache.use_search_settings(default)
    steps = max(plain.stats.new_tokens - 1, 1)
    for share in shares:
        scanned, indexed, retrieved, searches = searched[share]
        report.add(method=method, prompt_tokens=plain.stats.prompt_tokens, group=f"decode, attention share {share}",
                   same_answer=answers[share] == plain.token_ids, **_per_token(times[share], steps),
                   scanned_fraction=round(scanned / max(indexed, 1), 5),
                   retrieved_per_search=round(retrieved / max(searches, 1), 1))


def _counts(stats) -> tuple[int, int, int, int]:
    """A SearchStats' running counts: keys scanned, keys indexed, keys retrieved, searches."""
    return stats.scanned, stats.indexed, stats.retrieved, stats.searches


def _per_token(times: list[float], steps: int) -> dict[str, float | str]:
    """Row columns for answers' decode times (seconds for `steps` steps each): the median and the range, per step."""
    ordered = sorted(times)
    return {"decode_ms_per_token": round(ordered[len(ordered) // 2] * 1e3 / steps, 2),
            "decode_ms_range": f"{ordered[0] * 1e3 / steps:.1f}–{ordered[-1] * 1e3 / steps:.1f}"}


def _set_search_threads(session, threads: int) -> None:
    """Search each retrieval layer's heads on `threads` threads (engine.index.parallel)."""
    for layer in getattr(session.cache, "layers", []):
        index = getattr(layer, "index", None)
        if index is not None:
            index.search_threads = threads


def _answer(session, question: str, profile: cProfile.Profile | None = None):
    """One answer (Finished); the profiler, when given, runs from the first answer token to the last: decode steps
    only, not the question's prefill."""
    from engine.generate import Finished, TokenEvent

    for event in session.ask(question):
        if profile is not None and isinstance(event, TokenEvent):
            profile.enable()  # from the first token on (enabling it again is harmless)
        if isinstance(event, Finished):
            if profile is not None:
                profile.disable()
            return event
    raise RuntimeError("no answer")


REOPEN_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from engine.config import EngineConfig
from engine.generate import Finished
from engine.ingest import read_document
from engine.model import load_model
from engine.session import DocumentSession
from engine.store import Store
t_imports = time.perf_counter()
doc, question, attention = sys.argv[1], sys.argv[2], sys.argv[3]
loaded = load_model("default", "cpu", "float32")
t_model = time.perf_counter()
store = Store()
document = read_document(doc)
t_store = time.perf_counter()
session = DocumentSession(loaded, document, EngineConfig(attention=attention, max_new_tokens=8), store)
t_session = time.perf_counter()
list(session.prepare())
t_ready = time.perf_counter()
first = None
for event in session.ask(question):
    if first is None and type(event).__name__ == "TokenEvent":
        first = time.perf_counter()
    if isinstance(event, Finished):
        finished = event
t_done = time.perf_counter()
print(json.dumps({"cached": session.cached, "imports_s": t_imports - t0, "model_load_s": t_model - t_imports,
                  "store_open_s": t_store - t_model, "session_s": t_session - t_store, "ready_s": t_ready - t_session,
                  "first_token_s": (first or t_done) - t_ready, "answer": finished.text,
                  "attention": session.attention.mode}))
"""


def _reopen_part(args: argparse.Namespace, report: Report) -> None:
    from transformers import AutoTokenizer

    from engine.bench.haystack import DEFAULT_NEEDLE, needle_document
    from engine.model import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    with tempfile.TemporaryDirectory(prefix="folio-profile-") as work:
        doc = Path(work) / "document.txt"
        doc.write_text(needle_document(tokenizer, args.tokens, depth=0.5), encoding="utf-8")
        env = {**os.environ, "FOLIO_DATA_DIR": str(Path(work) / "library")}

        def child() -> tuple[dict, float]:
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", REOPEN_CHILD, str(doc), DEFAULT_NEEDLE.question,
                                     args.attention], capture_output=True, text=True, env=env, timeout=3600)
            if result.returncode:
                raise RuntimeError(result.stderr[-2000:])
            return json.loads(result.stdout.strip().splitlines()[-1]), time.perf_counter() - started

        first, _ = child()  # the first open: prefill, build, save
        for run_number in range(args.runs):
            timings, wall = child()
            if not timings["cached"]:
                raise RuntimeError("the reopen did not use the stored cache")
            report.add(run=run_number, attention=timings["attention"], tokens=args.tokens,
                       process_s=round(wall, 3), startup_and_exit_s=round(wall - sum(
                           timings[k] for k in ("imports_s", "model_load_s", "store_open_s", "session_s", "ready_s",
                                                "first_token_s")), 3),
                       **{k: round(v, 3) for k, v in timings.items() if k.endswith("_s")},
                       first_open_ready_s=round(first["ready_s"], 3),
                       same_answer=timings["answer"] == first["answer"])
    report.note("Each run a fresh process (python -c, the child script in engine/bench/profile_suite.py) on one "
                "stored library; the first open (not a row) made the cache. ready_s: DocumentSession.prepare on the "
                "stored cache (load, sha256 verification, index load; the window's 'cached — ready'); first_token_s: "
                "from ready to the first answer token (question prefill, first search)")


WEIGHT_FORMATS = ("float32", "int8-weights", "bfloat16", "int8-dynamic")


def _load_weights_variant(model: str, name: str):
    """The default model on the CPU with its weights as `name`: float32; int8-weights (EngineConfig.cpu_weights
    "int8": int8 weights, float32 activations); bfloat16; int8-dynamic (torch's dynamic quantization of the Linear
    layers, fbgemm: int8 weights and per-token int8 activations)."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    from engine.model import load_model

    loaded = load_model(model, "cpu", "bfloat16" if name == "bfloat16" else "float32",
                        cpu_weights="int8" if name == "int8-weights" else "full")
    if name == "int8-dynamic":
        loaded.model = quantize_dynamic(loaded.model, {torch.nn.Linear}, dtype=torch.qint8)
    return loaded


def _weights_part(args: argparse.Namespace, report: Report) -> None:
    """The same full-attention answer with the model's weights in each of --formats (WEIGHT_FORMATS), alternating;
    decode ms per token and whether the greedy tokens are float32's. --profile-formats also profiles one answer of
    each format named: where a format's time goes, by group (GROUPS) and by function."""
    import torch

    from engine.bench.needle_suite import text_document
    from engine.config import EngineConfig
    from engine.session import DocumentSession

    torch.set_num_threads(args.threads)
    formats = [f for f in args.formats.split(",") if f]
    if formats[0] != "float32" or any(f not in WEIGHT_FORMATS for f in formats):
        raise SystemExit(f"--formats: float32 first, then any of {', '.join(WEIGHT_FORMATS)}")
    path = Path(args.document) if args.document else Path(__file__).resolve().parents[2] / "resources" / "sample.md"
    document = text_document(path.read_text(encoding="utf-8"), path.stem)
    question = "Who was the first head keeper of the lighthouse, and when did he serve?"
    config = EngineConfig(attention="full", max_new_tokens=args.max_new_tokens)
    sessions = {}
    for name in formats:
        sessions[name] = DocumentSession(_load_weights_variant(args.model, name), document, config)
        list(sessions[name].prepare())
        _answer(sessions[name], question)  # warm
    times: dict[str, list[float]] = {name: [] for name in formats}
    tokens: dict[str, list[int]] = {}
    texts: dict[str, str] = {}
    for _ in range(args.repeats):
        for name in formats:
            finished = _answer(sessions[name], question)
            times[name].append(finished.stats.decode_s / max(finished.stats.new_tokens - 1, 1))
            tokens[name], texts[name] = finished.token_ids, finished.text
    for name in formats:
        ordered = sorted(times[name])
        same = sum(a == b for a, b in zip(tokens[name], tokens["float32"], strict=False))
        report.add(weights=name, decode_ms_per_token=round(ordered[len(ordered) // 2] * 1e3, 2),
                   decode_ms_range=f"{ordered[0] * 1e3:.1f}–{ordered[-1] * 1e3:.1f}",
                   vs_float32=round(sorted(times["float32"])[len(ordered) // 2] / ordered[len(ordered) // 2], 3),
                   same_tokens_as_float32=tokens[name] == tokens["float32"],
                   tokens_equal_before_first_difference=next(
                       (i for i, (a, b) in enumerate(zip(tokens[name], tokens["float32"], strict=False)) if a != b),
                       same), answer=texts[name])
    for name in [f for f in args.profile_formats.split(",") if f in sessions]:
        profile = cProfile.Profile()
        profiled = _answer(sessions[name], question, profile)
        steps = max(profiled.stats.new_tokens - 1, 1)
        groups, top = grouped_times(profile)
        for group in [g for g, _ in GROUPS] + [OTHER]:
            report.add(weights=name, group=group, profiled_ms_per_token=round(groups.get(group, 0.0) * 1e3 / steps, 2))
        print(f"top functions by own time ({name} weights, {steps} decode steps):")
        for own, function in top[: args.top]:
            print(f"  {own * 1e3 / steps:8.3f} ms/token  {function}")
    report.note(f"full attention, {args.threads} torch threads for the prefill, decode_threads 1; {args.repeats} "
                "answers each, alternating; median per decode step")


def run(args: argparse.Namespace, report: Report) -> None:
    {"decode": _decode_part, "reopen": _reopen_part, "weights": _weights_part}[args.part](args, report)
