"""budget: what a retrieval budget that follows the attention costs and buys, against fixed top-k, per decode step.

One prefill of --tokens tokens of real text by --model, every layer's post-RoPE queries and keys captured. The
first T - --test tokens are the document prefix: its first 128 and last 512 tokens are the static set, the rest is
offloaded behind one graph index per layer, trained on the prefill queries the cache would sample. The last --test
tokens play the answer: their queries are the decode queries, each attending to the prefix and the test tokens
before it.

Methods (comma list, every one over every layer):
- ``topk=K``: a fixed top-K (graph search, queue max(effort, K));
- ``share=S``: the adaptive budget (engine.index.budget) for a target share S of each head's attention, calibrated
  on the prefix's own window queries (quantile --quantile, floor --top-k, no cap);
- ``all``: every offloaded key.

Columns: keys retrieved per head and decode query (mean), keys scanned (q·k / N), left_out (the exact share of each
decode query's attention on offloaded keys it did not retrieve: mean, 90th percentile and max over layers, heads and
queries), reached (the share of (layer, head, query) whose left-out share is at most 1 - S: the calibration's
estimate tested against the exact mass), and step_ms: one decode step's attention over all layers (each layer's
search plus the compiled static + retrieved attention, as a CPU decode step runs it; values random), methods in
round-robin, with its ratio to the first method's.

    python -m engine.bench budget [--tokens 8192] [--methods topk=100,topk=500,topk=2000,share=0.95,all]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.bench.report import Report
from engine.cpu_decode import decode_attention_cpu
from engine.index import IndexParams, LayerIndex, build_layer_index
from engine.index.budget import AttentionCurves, attention_curves, calibration_positions
from engine.sizing import training_stride

N_SINK, N_WINDOW = 128, 512
METHODS = "topk=100,topk=500,topk=2000,share=0.9,share=0.95,share=0.98,all"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--tokens", type=int, default=8192, help="prefix + test tokens (8192)")
    parser.add_argument("--text", metavar="FILE", help="the text to prefill (default: the index suite's)")
    parser.add_argument("--test", type=int, default=64, help="tokens at the end whose queries are the decode queries")
    parser.add_argument("--methods", default=METHODS, help=f"comma list (default {METHODS})")
    parser.add_argument("--layers", default="", help="comma list of layers (default: all)")
    parser.add_argument("--top-k", type=int, default=100, help="the adaptive budget's floor (the top-k setting)")
    parser.add_argument("--quantile", type=float, default=0.9, help="the adaptive budget's quantile")
    parser.add_argument("--effort", type=int, default=100, help="graph search effort (queue)")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats over the decode queries")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--vectors-cache", metavar="DIR", help="folder to keep the captured vectors in and reuse")


@dataclass
class Method:
    """One contender: fixed top-k (k), adaptive (share) or every key (all)."""

    name: str
    k: int = 0
    share: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Method:
        kind, _, value = spec.partition("=")
        if kind == "topk" and value.isdigit() and int(value) > 0:
            return cls(spec, k=int(value))
        if kind == "share" and value and 0 < float(value) <= 1:
            return cls(spec, share=float(value))
        if spec == "all":
            return cls(spec, share=1.0)
        raise SystemExit(f"--methods: {spec!r} is not topk=K, share=S (0 < S <= 1) or all")


@dataclass
class Layer:
    """One layer's decode-step workload: static_k/v [H_kv, S, D] (the prefix's static set), off_k/v [H_kv, N, D]
    float16, test_q [H, m, D], test_k [H_kv, m, D] (the test tokens' own keys), all_k [H_kv, T, D] float32 (prefix),
    index, curves."""

    static_k: torch.Tensor
    static_v: torch.Tensor
    off_k: torch.Tensor
    off_v: torch.Tensor
    test_q: torch.Tensor
    test_k: torch.Tensor
    all_k: torch.Tensor
    index: LayerIndex
    curves: AttentionCurves


def prepare_layer(queries: np.ndarray, keys: np.ndarray, prefix: int, scale: float, effort: int) -> Layer:
    """queries [H, T', D], keys [H_kv, T', D] of one layer (T' = prefix + test tokens) -> its Layer: the index built
    and the attention curves calibrated as the cache does (training queries every training_stride positions)."""
    all_k = torch.from_numpy(np.ascontiguousarray(keys[:, :prefix], dtype=np.float32))
    window = prefix - N_WINDOW
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(keys.shape[0], prefix, keys.shape[2], generator=gen)
    static_k = torch.cat([all_k[:, :N_SINK], all_k[:, window:]], dim=1).contiguous()
    static_v = torch.cat([values[:, :N_SINK], values[:, window:]], dim=1).contiguous()
    off_k = all_k[:, N_SINK:window].to(torch.float16).contiguous()
    off_v = values[:, N_SINK:window].to(torch.float16).contiguous()
    stride = training_stride(prefix)
    positions = np.arange(0, prefix, stride)
    train = np.ascontiguousarray(queries[:, positions], dtype=np.float32)
    index = build_layer_index("retrieval", off_k.numpy(), train, IndexParams(effort=effort, threads=1))
    chosen = calibration_positions(positions, window)
    curves = attention_curves(torch.from_numpy(train[:, chosen]), positions[chosen], all_k, N_SINK, window, scale)
    test_q = torch.from_numpy(np.ascontiguousarray(queries[:, prefix:], dtype=np.float32))
    test_k = torch.from_numpy(np.ascontiguousarray(keys[:, prefix:], dtype=np.float32))
    return Layer(static_k, static_v, off_k, off_v, test_q, test_k, all_k, index, curves)


def offloaded_shares(layer: Layer, scale: float) -> torch.Tensor:
    """[H, m, N] float64: each decode query's exact attention share on each offloaded key, out of everything it
    attends to (the prefix and the test tokens up to its own)."""
    n_heads, m, _ = layer.test_q.shape
    group = n_heads // layer.all_k.shape[0]
    keys = torch.cat([layer.all_k, layer.test_k], dim=1).double()  # [H_kv, T + m, D]
    prefix = layer.all_k.shape[1]
    scores = torch.einsum("hmd,htd->hmt", layer.test_q.double(), keys.repeat_interleave(group, 0)) * scale
    future = torch.arange(keys.shape[1])[None, :] > (prefix + torch.arange(m))[:, None]
    shares = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return shares[:, :, N_SINK : prefix - N_WINDOW]


def budget_of(method: Method, layer: Layer, top_k: int, quantile: float) -> np.ndarray:
    """[H] keys per query head for `method` on `layer`."""
    n_heads = layer.test_q.shape[0]
    if method.k:
        return np.full(n_heads, min(method.k, layer.off_k.shape[1]), dtype=np.int64)
    return layer.curves.budgets(method.share, quantile, top_k)


def measure(method: Method, layers: list[Layer], shares: list[torch.Tensor], args: argparse.Namespace) -> dict:
    """The method's retrieved keys, keys scanned and left-out shares over every layer (no timing)."""
    retrieved, scanned, left_out, reached = [], [], [], []
    for layer, share in zip(layers, shares, strict=True):
        budget = budget_of(method, layer, args.top_k, args.quantile)
        found = layer.index.search(layer.test_q.numpy(), budget, args.effort)
        ids = torch.from_numpy(found.ids)
        taken = torch.zeros_like(share, dtype=torch.bool).scatter_(-1, ids.clamp_min(0), ids >= 0)
        left = (share * ~taken).sum(-1)  # [H, m]
        retrieved.append((ids >= 0).sum(-1).double().mean().item())
        scanned.append(found.scanned.mean() / layer.off_k.shape[1])
        left_out.append(left.flatten())
        if method.share:
            reached.append((left <= 1 - method.share + 1e-9).double().flatten())
    left_all = torch.cat(left_out)
    row = {"method": method.name, "keys_retrieved": float(np.mean(retrieved)),
           "scanned_fraction": float(np.mean(scanned)), "left_out_mean": float(left_all.mean()),
           "left_out_p90": float(left_all.quantile(0.9)), "left_out_max": float(left_all.max())}
    if reached:
        row["reached"] = float(torch.cat(reached).mean())
    return row


def time_methods(methods: list[Method], layers: list[Layer], args: argparse.Namespace, scale: float) -> list[float]:
    """Median ms of one decode step's attention over all layers per method, in round-robin (step by step, method by
    method) after a warm-up."""
    budgets = [[budget_of(method, layer, args.top_k, args.quantile) for layer in layers] for method in methods]
    m = layers[0].test_q.shape[1]

    def step(j: int, i: int) -> None:
        for layer, budget in zip(layers, budgets[j], strict=True):
            q = layer.test_q[:, i : i + 1].contiguous()
            found = layer.index.search(q.numpy(), budget, args.effort)
            decode_attention_cpu(q, layer.static_k, layer.static_v, layer.off_k, layer.off_v,
                                 torch.from_numpy(found.ids), scale)

    for j in range(len(methods)):
        step(j, 0)
    spent: list[list[float]] = [[] for _ in methods]
    for _ in range(args.repeats):
        for i in range(m):
            for j in range(len(methods)):
                started = time.perf_counter()
                step(j, i)
                spent[j].append(time.perf_counter() - started)
    return [float(np.median(s)) * 1e3 for s in spent]


def run(args: argparse.Namespace, report: Report) -> None:
    from transformers import AutoConfig

    from engine.bench.gemma import resolve_bench_model
    from engine.bench.index_suite import index_text
    from engine.bench.vectors import prefill_vectors

    torch.set_num_threads(args.threads)
    methods = [Method.parse(spec.strip()) for spec in args.methods.split(",") if spec.strip()]
    config = AutoConfig.from_pretrained(resolve_bench_model(args.model)).get_text_config()
    layer_ids = [int(x) for x in args.layers.split(",") if x.strip()] or list(range(config.num_hidden_layers))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    scale = (getattr(config, "query_pre_attn_scalar", None) or head_dim) ** -0.5
    text = Path(args.text).read_text(encoding="utf-8") if args.text else index_text()
    capture = prefill_vectors(args.model, text, args.tokens, layer_ids, 1.0,
                              Path(args.vectors_cache) if args.vectors_cache else None)
    prefix = args.tokens - args.test
    if prefix <= N_SINK + N_WINDOW:
        raise SystemExit(f"--tokens must exceed --test + {N_SINK + N_WINDOW}")
    layers, shares = [], []
    for number in layer_ids:
        vectors = capture.layers[number]
        if vectors.keys.shape[1] != args.tokens:
            raise SystemExit(f"layer {number} keeps {vectors.keys.shape[1]} keys (a sliding-window layer?)")
        started = time.perf_counter()
        layers.append(prepare_layer(vectors.queries, vectors.keys, prefix, scale, args.effort))
        shares.append(offloaded_shares(layers[-1], scale))
        print(f"  layer {number}: index and curves in {time.perf_counter() - started:.1f} s", flush=True)
    rows = [measure(method, layers, shares, args) for method in methods]
    for row, step_ms in zip(rows, time_methods(methods, layers, args, scale), strict=True):
        row["step_ms"] = step_ms
    for row in rows:
        row["step_ratio"] = row["step_ms"] / rows[0]["step_ms"]
        row["scanned_ratio"] = row["scanned_fraction"] / rows[0]["scanned_fraction"]
        report.add(tokens=prefix, n_offloaded=layers[0].off_k.shape[1], **row)
    report.note(f"{args.model}, {len(layer_ids)} layers, prefix {prefix} tokens (static {N_SINK} + {N_WINDOW}), "
                f"{args.test} decode queries; graph effort {args.effort}; adaptive: quantile {args.quantile}, floor "
                f"{args.top_k}; step_ms: median of one decode step's attention over all layers, methods in "
                "round-robin; ratios against the first method")
