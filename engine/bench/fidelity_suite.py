"""fidelity: teacher-forced top-1 agreement and KL(full || method) against full attention's answers.

For each (document, question) case the default model first answers greedily with full attention (up to
--max-new-tokens), keeping every step's next-token distribution. Then, per method, the document is
prefilled (exact attention) into a RetrievalCache, its indexes are built, the question is prefilled
and the SAME answer tokens are fed one by one (teacher forcing). At every answer position:
top-1 agreement = argmax of the method's logits equals full attention's; KL = KL(p_full || p_method).
The document's prefill is shared by the methods (one exact prefill, copied before each index build).

Cases: the needle document at a few depths, questions about resources/sample.md, and questions about
the haystack text itself (pydoc topics). The question's own prefill attends to every offloaded key
(exactly, as the engine does), so the first answer position differs only for "window".

    python -m engine.bench fidelity [--tokens 3500] [--methods retrieval,window,exact] [--cases needle,sample,haystack]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel

from engine.bench.haystack import DEFAULT_NEEDLE, filler_text, needle_document
from engine.bench.report import Report
from engine.cache import RetrievalCache, RetrievalSettings
from engine.config import EngineConfig
from engine.events import run_steps
from engine.generate import prefill
from engine.layer_prefill import prefix_prefill_steps
from engine.model import LoadedModel, set_threads
from engine.prompt import build_document_prompt
from engine.retrieval import RETRIEVAL_ATTENTION
from engine.session import FULL_ATTENTION, retrieval_settings

METHODS = ("retrieval", "window", "exact")
SAMPLE_DOCUMENT = Path(__file__).resolve().parents[2] / "resources" / "sample.md"
SAMPLE_QUESTIONS = (
    "Who designed the lighthouse at Varnholm?",
    "How many ships were wrecked on the Grey Teeth between 1820 and 1860?",
    "Where did the stone for the tower come from?",
)
HAYSTACK_QUESTIONS = (
    "What does the document say about the 'assert' statement?",
    "What is an augmented assignment statement, according to the document?",
    "What is a coroutine function, according to the document?",
)


@dataclass(frozen=True)
class Case:
    """One document and one question about it."""

    name: str
    document: str
    question: str


@dataclass
class Reference:
    """Full attention's greedy answer: tokens [n] and log-probabilities [n, vocab] predicting each."""

    tokens: list[int]
    logprobs: torch.Tensor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--tokens", type=int, default=3500, help="needle/haystack document length in tokens")
    parser.add_argument("--cases", default="needle,sample,haystack", help="case families, comma list")
    parser.add_argument("--needle-depths", default="25,50,75", help="needle depths in percent")
    parser.add_argument("--questions", type=int, default=2, help="questions per sample/haystack document")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="retrieval-family modes (retrieval, window, exact, flat, ivf, hnsw)")
    parser.add_argument("--n-sink", type=int, default=128)
    parser.add_argument("--n-window", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--attention-share", type=float, default=EngineConfig.attention_share,
                        help="the retrieval budget's share of attention (0: a fixed --top-k)")
    parser.add_argument("--effort", type=int, default=EngineConfig.search_effort, help="index search effort")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0 = all cores)")


def make_cases(tokenizer, args: argparse.Namespace) -> list[Case]:
    """The (document, question) pairs asked for by --cases."""
    families = {f.strip() for f in args.cases.split(",") if f.strip()}
    cases = []
    if "needle" in families:
        for depth in (int(d) for d in args.needle_depths.split(",") if d.strip()):
            text = needle_document(tokenizer, args.tokens, depth / 100)
            cases.append(Case(f"needle@{depth}%", text, DEFAULT_NEEDLE.question))
    if "sample" in families:
        text = SAMPLE_DOCUMENT.read_text(encoding="utf-8")
        cases += [Case(f"sample#{i + 1}", text, q) for i, q in enumerate(SAMPLE_QUESTIONS[: args.questions])]
    if "haystack" in families:
        text = filler_text(tokenizer, args.tokens)
        cases += [Case(f"haystack#{i + 1}", text, q) for i, q in enumerate(HAYSTACK_QUESTIONS[: args.questions])]
    return cases


@torch.inference_mode()
def full_reference(loaded: LoadedModel, prompt_ids: list[int], max_new: int, chunk: int) -> Reference:
    """Greedy answer with full attention; logprobs [n, vocab] float32 of each answer position."""
    model = loaded.model
    model.set_attn_implementation(FULL_ATTENTION)
    cache = DynamicCache(config=model.config)
    logits = prefill(model, torch.tensor(prompt_ids), cache, chunk)
    tokens, logprobs = [], []
    for _ in range(max_new):
        logprobs.append(torch.log_softmax(logits.float(), dim=-1))
        token = int(logits.argmax())
        if token in loaded.stop_token_ids:
            break
        tokens.append(token)
        logits = model(input_ids=torch.tensor([[token]], device=model.device), cache=cache).logits[0, -1]
    return Reference(tokens, torch.stack(logprobs[: max(len(tokens), 1)]).cpu())


@torch.inference_mode()
def prefilled_document(model: PreTrainedModel, prefix_ids: list[int], settings: RetrievalSettings, chunk: int,
                       device: torch.device) -> RetrievalCache:
    """A RetrievalCache holding the document prefix (exact prefill in the app's order, layer by layer where the model
    allows; queries recorded), not yet indexed."""
    model.set_attn_implementation(RETRIEVAL_ATTENTION)
    cache = RetrievalCache(model.config.num_hidden_layers, len(prefix_ids), device, settings)
    run_steps(prefix_prefill_steps(model, torch.tensor(prefix_ids), cache, chunk))
    return cache


def with_settings(prefilled: RetrievalCache, settings: RetrievalSettings) -> RetrievalCache:
    """A copy of a prefilled, not yet indexed cache that will build and search with `settings`."""
    if prefilled.indexed or any(layer.indexed for layer in prefilled.layers):
        raise ValueError("only a cache that is not indexed yet can take other settings")
    cache = copy.deepcopy(prefilled)
    cache.settings = settings
    for layer in cache.layers:
        layer.settings = settings
    return cache


@torch.inference_mode()
def teacher_forced_logprobs(model: PreTrainedModel, cache: RetrievalCache, question_ids: list[int],
                            answer: list[int], chunk: int) -> torch.Tensor:
    """Build the cache's indexes, prefill the question and feed answer[:-1]: logprobs [len(answer), vocab]."""
    model.set_attn_implementation(RETRIEVAL_ATTENTION)
    kwargs = {"folio_cache": cache}
    list(cache.build_index_steps())
    logits = prefill(model, torch.tensor(question_ids), cache, chunk, forward_kwargs=kwargs)
    out = [torch.log_softmax(logits.float(), dim=-1)]
    for token in answer[:-1]:
        step = torch.tensor([[token]], device=model.device)
        logits = model(input_ids=step, cache=cache, **kwargs).logits[0, -1]
        out.append(torch.log_softmax(logits.float(), dim=-1))
    return torch.stack(out).cpu()


def compare(reference: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """reference, other [n, vocab] log-probabilities -> (top-1 equal [n] bool, KL(ref || other) [n])."""
    ref, oth = reference.double(), other.double()
    kl = (ref.exp() * (ref - oth)).sum(dim=-1).clamp_min(0.0)
    return reference.argmax(-1) == other.argmax(-1), kl


def method_settings(method: str, args: argparse.Namespace) -> RetrievalSettings:
    """The engine's own settings for an attention mode (as DocumentSession would use)."""
    config = EngineConfig(attention=method, n_sink=args.n_sink, n_window=args.n_window, top_k=args.top_k,
                          attention_share=args.attention_share,
                          search_effort=args.effort)
    return retrieval_settings(config)


def run_case(loaded: LoadedModel, case: Case, methods: list[str], args: argparse.Namespace, report: Report,
             totals: dict[str, list]) -> None:
    """Compare every method with full attention on one case; add one row per method."""
    tokenizer = loaded.tokenizer
    prompt = build_document_prompt(tokenizer, case.document)
    question_ids = prompt.question_ids(tokenizer, case.question)
    reference = full_reference(loaded, prompt.prefix_ids + question_ids, args.max_new_tokens, args.prefill_chunk)
    if not reference.tokens:
        report.note(f"{case.name}: full attention answered nothing; skipped")
        return
    started = time.perf_counter()
    base = prefilled_document(loaded.model, prompt.prefix_ids, method_settings(methods[0], args),
                              args.prefill_chunk, loaded.device)
    prefill_s = time.perf_counter() - started
    answer_text = " ".join(tokenizer.decode(reference.tokens, skip_special_tokens=True).split())
    for method in methods:
        cache = with_settings(base, method_settings(method, args))
        logprobs = teacher_forced_logprobs(loaded.model, cache, question_ids, reference.tokens, args.prefill_chunk)
        agree, kl = compare(reference.logprobs, logprobs)
        totals[method].append((agree, kl))
        report.add(method=method, param=case.name, tokens=len(prompt.prefix_ids), compared=len(agree),
                   top1_agreement=float(agree.float().mean()), kl=float(kl.mean()), kl_max=float(kl.max()),
                   first_disagreement=int((~agree).nonzero()[0, 0]) if not bool(agree.all()) else None,
                   prefill_s=prefill_s, build_s=cache.index_build_s,
                   scanned_fraction=cache.stats.scanned_fraction if cache.stats.searches else None,
                   full_answer=answer_text[:50])
    loaded.model.set_attn_implementation(FULL_ATTENTION)


def run(args: argparse.Namespace, report: Report) -> None:
    from engine.model import load_model

    set_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or "full" in methods:
        raise SystemExit("--methods: retrieval-family modes only (full attention is the reference)")
    loaded = load_model(args.model, device="cpu", dtype="float32")
    totals: dict[str, list] = defaultdict(list)
    for case in make_cases(loaded.tokenizer, args):
        print(f"case {case.name}: {case.question}", flush=True)
        run_case(loaded, case, methods, args, report, totals)
    for method, results in totals.items():
        agree = torch.cat([a for a, _ in results])
        kl = torch.cat([k for _, k in results])
        report.add(method=method, param="all cases", compared=len(agree), top1_agreement=float(agree.float().mean()),
                   kl=float(kl.mean()), kl_max=float(kl.max()))
    report.note(
        f"teacher forcing on full attention's greedy answers (<= {args.max_new_tokens} tokens); KL = KL(p_full || "
        f"p_method) in nats, mean over answer positions; n_sink={args.n_sink}, n_window={args.n_window}, "
        f"top_k={args.top_k}, attention share={args.attention_share:g}, effort={args.effort}; the first answer "
        "position follows the question's prefill, which attends to all offloaded keys exactly (except window)"
    )
