"""freerun: free-running greedy answers of each attention method against full attention's, on real documents.

The set (`resources/fidelity/cases.json`, engine.bench.freerun_cases): Debian man pages and licence texts that
nobody on the project wrote, 3K-8K tokens for the default model, each with questions and the facts a right answer
contains; three of them carry needles (facts planted at 10, 50 and 90% depth) with a question each.

Per document: full attention prefills it once (transformers' cache, as the app's "full" mode), and the retrieval
cache once, layer by layer (the app's path); each index method's indexes are built once on a copy of that cache,
and the methods that share them (another top-k, the adaptive budget) switch search settings on the same copy. Per
question: full attention answers greedily (the reference), then each method answers greedily on its own, feeding
back its own tokens (free-running, what a user sees), methods in turn; after each answer the question and answer are
dropped from the cache, as a new chat does.

Columns: identical (the answer's tokens equal full attention's), first_diff (the first answer token where they
part), passed (the answer holds every expected fact), needle (the planted fact's name and depth), scanned (keys
scanned by the searches / keys indexed, over the answer), keys (keys retrieved per head and step), ms_token (the
whole model's decode step). The summary rows per method give the share of identical answers, the needles passed
(and lost: passed by full attention, not by the method), the facts found, and means.

Methods: ``MODE[@k=K][@share=S][@cap=C]``: MODE a retrieval-family attention mode (retrieval, exact, flat, ivf,
hnsw, window), K its top-k (default 100), S the adaptive budget's attention share (default 0: a fixed top-k), C its
cap on any head's budget (default: the engine's; 0: every key); ``@all`` retrieves every offloaded key.

    python -m engine.bench freerun [--quick] [--documents apt-cache,GPL-2] [--methods ...] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import DynamicCache

from engine.bench.fidelity_suite import prefilled_document, with_settings
from engine.bench.freerun_cases import CASES_FILE, CaseDocument, Question, load_cases
from engine.bench.report import Report
from engine.cache import RetrievalCache, RetrievalSettings, SearchStats
from engine.config import CPU_WEIGHTS, EngineConfig
from engine.generate import Finished, SamplingOptions, generate, prefill
from engine.model import LoadedModel, set_threads
from engine.prompt import DocumentPrompt, build_document_prompt
from engine.retrieval import RETRIEVAL_ATTENTION
from engine.session import FULL_ATTENTION, retrieval_settings

ADAPTIVE_SHARE = 0.95
METHODS = f"retrieval@k=100,retrieval@share={ADAPTIVE_SHARE},exact@k=100,window"
QUICK = {"documents": "apt-cache", "questions": 2, "max_new_tokens": 16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--cases", default=str(CASES_FILE), help="the set's cases.json")
    parser.add_argument("--documents", default="", help="comma list of document names (default: all)")
    parser.add_argument("--questions", type=int, default=0, help="at most this many questions per document (0: all; "
                        "needle questions come last)")
    parser.add_argument("--methods", default=METHODS, help=f"comma list (default {METHODS})")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--n-sink", type=int, default=EngineConfig.n_sink)
    parser.add_argument("--n-window", type=int, default=EngineConfig.n_window)
    parser.add_argument("--effort", type=int, default=EngineConfig.search_effort, help="index search effort")
    parser.add_argument("--kv-dtype", choices=("float16", "float32"), default=EngineConfig.kv_dtype)
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0 = all cores)")
    parser.add_argument("--cpu-weights", choices=CPU_WEIGHTS, default="full",
                        help="the linear layers of the model every method runs on (default full: float32, the "
                        "reference; the app's CPU default is int8)")
    parser.add_argument("--compare-cpu-weights", choices=CPU_WEIGHTS, default=None,
                        help="also answer with full attention on a copy of the model with these linear layers (row "
                        "'full@<weights>'): what the weights alone change")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: documents {QUICK['documents']}, {QUICK['questions']} questions each, "
                        f"{QUICK['max_new_tokens']} new tokens (unless given)")


@dataclasses.dataclass(frozen=True)
class Method:
    """An attention mode with its search settings: name as given, mode, top_k, attention share, budget cap (None: the
    engine's)."""

    name: str
    mode: str
    top_k: int = EngineConfig.top_k
    share: float = 0.0
    cap: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Method:
        mode, *options = spec.split("@")
        method = cls(spec, mode)
        for option in options:
            key, _, value = option.partition("=")
            try:
                if key == "k":
                    method = dataclasses.replace(method, top_k=int(value))
                elif key == "share":
                    method = dataclasses.replace(method, share=float(value))
                elif key == "cap":
                    method = dataclasses.replace(method, cap=int(value))
                elif key == "all" and not value:
                    method = dataclasses.replace(method, share=1.0, cap=0)
                else:
                    raise ValueError(option)
            except ValueError:
                raise SystemExit(f"--methods: {spec!r}: options are @k=K, @share=S, @cap=C and @all") from None
        try:
            EngineConfig(attention=mode, top_k=method.top_k, attention_share=method.share)
        except ValueError as error:
            raise SystemExit(f"--methods: {spec!r}: {error}") from None
        if mode == "full":
            raise SystemExit("--methods: full attention is the reference; list retrieval-family modes")
        return method

    def settings(self, args: argparse.Namespace) -> RetrievalSettings:
        config = EngineConfig(attention=self.mode, n_sink=args.n_sink, n_window=args.n_window, top_k=self.top_k,
                              attention_share=self.share, search_effort=args.effort, kv_dtype=args.kv_dtype)
        settings = retrieval_settings(config)
        return settings if self.cap is None else dataclasses.replace(settings, budget_cap=self.cap)


def answer(loaded: LoadedModel, prompt: DocumentPrompt, question: Question, cache, max_new: int, chunk: int,
           retrieval: bool) -> Finished:
    """One greedy answer with the prefix already in `cache`; the question and answer are dropped after it."""
    model = loaded.model
    model.set_attn_implementation(RETRIEVAL_ATTENTION if retrieval else FULL_ATTENTION)
    ids = prompt.prompt_ids(loaded.tokenizer, question.text)
    kwargs = {"folio_cache": cache} if retrieval else None
    events = generate(model, ids, cache, decode_text=lambda t: loaded.tokenizer.decode(t, skip_special_tokens=True),
                      stop_ids=loaded.stop_token_ids, max_positions=loaded.max_positions or 1 << 62,
                      options=SamplingOptions(max_new), prefill_chunk=chunk, forward_kwargs=kwargs)
    finished = [event for event in events if isinstance(event, Finished)][-1]
    cache.crop(len(prompt.prefix_ids) - cache.get_seq_length())  # transformers' crop: minus the tokens to drop
    return finished


def first_difference(got: list[int], want: list[int]) -> int | None:
    """The first answer position where two token lists part (None when equal)."""
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return i
    return None if len(got) == len(want) else min(len(got), len(want))


def method_caches(loaded: LoadedModel, prompt: DocumentPrompt, methods: list[Method], args: argparse.Namespace
                  ) -> tuple[dict[str, RetrievalCache], float, dict[str, float]]:
    """One indexed RetrievalCache per attention mode of `methods` (prefilled once, copied per mode): (caches,
    prefill seconds, index build seconds per mode)."""
    started = time.perf_counter()
    base = prefilled_document(loaded.model, prompt.prefix_ids, methods[0].settings(args), args.prefill_chunk,
                              loaded.device)
    prefill_s = time.perf_counter() - started
    caches, build_s = {}, {}
    for method in methods:
        if method.mode not in caches:
            cache = with_settings(base, method.settings(args))
            started = time.perf_counter()
            list(cache.build_index_steps())
            caches[method.mode], build_s[method.mode] = cache, time.perf_counter() - started
    return caches, prefill_s, build_s


def full_prefill(loaded: LoadedModel, prompt: DocumentPrompt, chunk: int) -> tuple[DynamicCache, float]:
    model = loaded.model
    model.set_attn_implementation(FULL_ATTENTION)
    cache = DynamicCache(config=model.config)
    started = time.perf_counter()
    with torch.inference_mode():
        prefill(model, torch.tensor(prompt.prefix_ids), cache, chunk)
    return cache, time.perf_counter() - started


def ms_per_token(finished: Finished) -> float | None:
    stats = finished.stats
    return stats.decode_s / (stats.new_tokens - 1) * 1e3 if stats.new_tokens > 1 else None


def run_document(loaded: LoadedModel, document: CaseDocument, methods: list[Method], args: argparse.Namespace,
                 report: Report, results: dict[str, list[dict]], other: LoadedModel | None = None) -> None:
    """Answer `document`'s questions with full attention (the reference), each method, and full attention on
    `other` (the same model with other linear layers) where given."""
    tokenizer = loaded.tokenizer
    prompt = build_document_prompt(tokenizer, document.text)
    questions = document.questions[: args.questions] if args.questions else document.questions
    longest = max(len(prompt.prompt_ids(tokenizer, q.text)) for q in questions)
    if loaded.max_positions and longest + args.max_new_tokens > loaded.max_positions:
        report.note(f"{document.name}: {longest} + {args.max_new_tokens} tokens exceed the model's "
                    f"{loaded.max_positions}; skipped")
        return
    print(f"{document.name}: {len(prompt.prefix_ids)} tokens, {len(questions)} questions", flush=True)
    full_cache, full_s = full_prefill(loaded, prompt, args.prefill_chunk)
    caches, prefill_s, build_s = method_caches(loaded, prompt, methods, args)
    other_cache = full_prefill(other, prompt, args.prefill_chunk)[0] if other is not None else None
    print(f"  prefill: full {full_s:.1f} s, layer by layer {prefill_s:.1f} s; builds "
          + ", ".join(f"{mode} {s:.1f} s" for mode, s in build_s.items()), flush=True)
    for question in questions:
        reference = answer(loaded, prompt, question, full_cache, args.max_new_tokens, args.prefill_chunk, False)
        full_passed = question.passed(reference.text)
        base = {"document": document.name, "tokens": len(prompt.prefix_ids), "question": question.text[:40],
                "needle": question.needle, "full_passed": full_passed}
        results["full"].append(base | {"method": "full", "passed": full_passed, "identical": True,
                                       "ms_token": ms_per_token(reference)})
        print(f"  {question.text}\n    full: {' '.join(reference.text.split())[:100]!r}", flush=True)
        if other is not None:
            finished = answer(other, prompt, question, other_cache, args.max_new_tokens, args.prefill_chunk, False)
            _record(f"full@{other.cpu_weights}", finished, reference, question, base, report, results)
        for method in methods:
            cache = caches[method.mode]
            cache.use_search_settings(method.settings(args))
            cache.stats = SearchStats()
            finished = answer(loaded, prompt, question, cache, args.max_new_tokens, args.prefill_chunk, True)
            _record(method.name, finished, reference, question, base, report, results, cache.stats)


def _record(name: str, finished: Finished, reference: Finished, question: Question, base: dict, report: Report,
            results: dict[str, list[dict]], stats: SearchStats | None = None) -> None:
    """One method's answer to one question, compared with full attention's, as a row."""
    diff = first_difference(finished.token_ids, reference.token_ids)
    searched = stats is not None and stats.searches
    row = base | {"method": name, "identical": diff is None, "first_diff": diff,
                  "passed": question.passed(finished.text),
                  "scanned": stats.scanned_fraction if searched else None,
                  "keys": stats.retrieved_per_search if searched else None,
                  "ms_token": ms_per_token(finished), "answer": " ".join(finished.text.split())[:60]}
    results[name].append(row)
    report.add(echo=False, **row)
    if diff is not None:
        print(f"    {name}: differs at token {diff}: {row['answer']!r}", flush=True)


def summarize(results: dict[str, list[dict]], report: Report, first: str) -> None:
    """One row per method over all cases (and full attention's passes)."""
    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    base_ms = mean([row["ms_token"] for row in results.get(first, [])])
    for name, rows in results.items():
        needles = [row for row in rows if row["needle"]]
        lost = [row for row in needles if row["full_passed"] and not row["passed"]]
        identical = sum(row["identical"] for row in rows)
        diffs = [row.get("first_diff") for row in rows if not row["identical"]]
        ms = mean([row["ms_token"] for row in rows])
        report.add(method=name, document="all", cases=len(rows), identical=identical,
                   identical_share=identical / len(rows) if rows else None, first_diff_mean=mean(diffs),
                   facts_passed=sum(row["passed"] for row in rows if not row["needle"]),
                   needles_passed=f"{sum(row['passed'] for row in needles)}/{len(needles)}",
                   needles_lost=len(lost), scanned=mean([row.get("scanned") for row in rows]),
                   keys=mean([row.get("keys") for row in rows]), ms_token=ms,
                   ms_ratio=ms / base_ms if ms and base_ms else None)


def run(args: argparse.Namespace, report: Report) -> None:
    from engine.bench.gemma import resolve_bench_model
    from engine.model import load_model

    if args.quick:
        args.documents = args.documents or QUICK["documents"]
        args.questions = args.questions or QUICK["questions"]
        if args.max_new_tokens == 48:
            args.max_new_tokens = QUICK["max_new_tokens"]
    set_threads(args.threads)
    methods = [Method.parse(spec.strip()) for spec in args.methods.split(",") if spec.strip()]
    if not methods:
        raise SystemExit("--methods: give at least one method")
    names = [name.strip() for name in args.documents.split(",") if name.strip()] or None
    documents = load_cases(Path(args.cases), names)
    model = resolve_bench_model(args.model)
    loaded = load_model(model, device="cpu", dtype="float32", cpu_weights=args.cpu_weights)
    other = (load_model(model, device="cpu", dtype="float32", cpu_weights=args.compare_cpu_weights)
             if args.compare_cpu_weights else None)
    results: dict[str, list[dict]] = defaultdict(list)
    try:
        for document in documents:
            run_document(loaded, document, methods, args, report, results, other)
    finally:  # an interrupted run still sums up the questions it answered
        summarize(results, report, methods[0].name)
    report.note(f"linear layers: {loaded.cpu_weights}"
                + (f"; full@{other.cpu_weights}: full attention on a copy with {other.cpu_weights} linear layers"
                   if other is not None else ""))
    report.note(f"greedy, <= {args.max_new_tokens} new tokens; static {args.n_sink} + {args.n_window}; search effort "
                f"{args.effort}; K/V {args.kv_dtype}; full attention: transformers' cache (sdpa); identical = same "
                "tokens as full attention's answer; ms_ratio against the first method (methods in turn per question)")
    for document in documents:
        report.note(f"{document.name}: {document.source}; {document.licence}")
