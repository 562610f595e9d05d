"""cpu_work: the CPU's work per decode token for Llama-3-8B's shape at long context, against the paper's 0.107 s.

What a GPU host's CPU does for every token with RetrievalAttention: for each of the 32 layers, search the offloaded
keys of its 32 query heads (8 KV heads, head_dim 128) and compute attention over the retrieved keys (the compiled
step, decode_attention_cpu, here with the static set on the CPU too). One layer is built and timed (8 graphs); the
model's work is 32 x that layer's step, since the CPU runs the layers one after another.

Vectors: Gemma 3 270M's real post-RoPE vectors from one prefill of --capture-tokens tokens of English text (its
three global layers 5, 11, 17: 4 query heads over 1 KV head, head_dim 256), RoPE-tiled to --tokens positions as the
decode suite tiles (keys and queries rotated by the model's RoPE to their tiled positions), then projected to
head_dim 128 by 8 random orthonormal projections, one per KV head (KV head j: global layer j mod 3, projection j,
its 4 query heads the layer's 4): inner products keep their structure up to the projection's distortion. Values
random. Methods timed in round-robin, query by query, at the smallest queue reaching recall@100 0.95.

    python -m engine.bench cpu_work [--tokens 131072] [--capture-tokens 32768] [--methods retrieval,qgraph]
                                  [--index-threads 1,2] [--vectors-cache DIR] [--json-out F]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np

from engine.bench.report import Report
from engine.sizing import training_stride

PAPER_S_PER_TOKEN = 0.107  # RetrievalAttention, Llama-3-8B at 128K, RTX 4090 + i9-10900X: the whole decode step
LAYERS, HEADS, KV_HEADS, DIM = 32, 32, 8, 128
GEMMA_GLOBAL_LAYERS = (5, 11, 17)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--capture-tokens", type=int, default=32768, help="tokens of the Gemma 3 prefill (<= 32768 "
                        "without a RoPE stretch)")
    parser.add_argument("--methods", default="retrieval,qgraph")
    parser.add_argument("--index-threads", default="1,2", help="search threads per layer to compare, comma list")
    parser.add_argument("--vectors-cache", metavar="DIR", help="where the Gemma capture is kept and reused")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)


def gemma_inv_freq(head_dim: int = 256, theta: float = 1_000_000.0) -> np.ndarray:
    """Gemma 3's global layers' RoPE frequencies [D/2] (rope theta 1e6, no stretch)."""
    return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def llama_shaped(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """keys [8, N, 128], train [32, Nq, 128], test [32, 64, 128] from the tiled, projected Gemma capture."""
    from engine.bench.decode_suite import Segment, tile_vectors
    from engine.bench.index_suite import index_text
    from engine.bench.vectors import prefill_vectors

    capture = prefill_vectors("gemma3-270m", index_text(), args.capture_tokens, list(GEMMA_GLOBAL_LAYERS), 1.0,
                              Path(args.vectors_cache) if args.vectors_cache else None)
    rng = np.random.default_rng(args.seed)
    n_train = args.tokens // training_stride(args.tokens)  # as many as RetrievalCache keeps
    tiled = {}
    for layer in GEMMA_GLOBAL_LAYERS:
        vectors = capture.layers[layer]
        segment = Segment(np.asarray(vectors.queries, np.float32), np.asarray(vectors.keys, np.float32))
        tiled[layer] = tile_vectors([segment], args.tokens, gemma_inv_freq(segment.keys.shape[-1]), n_train)
    keys, train, test = [], [], []
    for head in range(KV_HEADS):
        layer_keys, layer_train, layer_test = tiled[GEMMA_GLOBAL_LAYERS[head % len(GEMMA_GLOBAL_LAYERS)]]
        projection, _ = np.linalg.qr(rng.standard_normal((layer_keys.shape[-1], DIM)))
        projection = projection.astype(np.float32) * np.float32(np.sqrt(layer_keys.shape[-1] / DIM))
        keys.append(layer_keys[0] @ projection)
        train.extend(q @ projection for q in layer_train)  # the layer's 4 query heads share this KV head
        test.extend(q @ projection for q in layer_test)
    return np.stack(keys), np.stack(train), np.stack(test)


def run(args: argparse.Namespace, report: Report) -> None:
    import torch

    from engine.bench.decode_suite import (
        Contender,
        full_step,
        make_workload,
        prepare_method,
        retrieval_step,
        time_interleaved,
    )

    torch.set_num_threads(args.threads)
    keys, train, test = llama_shaped(args)
    w = make_workload(keys, train, test, "Gemma 3 global layers, tiled and projected", args.seed)
    print(f"N = {args.tokens}: {w.off_k.shape[1]} offloaded keys x {KV_HEADS} KV heads, {HEADS} query heads",
          flush=True)
    reference = full_step(w)(w.test)
    built: dict = {}
    thread_counts = [int(t) for t in args.index_threads.split(",") if t]
    prepared = []
    for method in [m for m in args.methods.split(",") if m]:
        first = prepare_method(method, w, argparse.Namespace(**vars(args) | {"index_threads": thread_counts[0]}),
                               reference, built)
        for threads in thread_counts:  # the same index, its heads searched on `threads` threads
            index = copy.copy(first.index)
            index.search_threads = index.threads = threads
            search_s: list[float] = []
            row = first.row | {"method": f"{method}, {threads} thread{'s' if threads > 1 else ''}"}
            prepared.append(Contender(row, retrieval_step(w, index, first.effort, search_s), search_s, index))
    time_interleaved(prepared, w.test, args.steps, args.repeats)
    for contender in prepared:
        row = contender.row
        layer_ms = row["step_ms"]
        report.add(method=row["method"], param=row["param"], tokens=args.tokens, recall_at_100=row["recall_at_100"],
                   scanned_fraction=row["scanned_fraction"], layer_step_ms=round(layer_ms, 3),
                   layer_search_ms=round(row["search_ms"], 3), model_s_per_token=round(LAYERS * layer_ms / 1e3, 4),
                   vs_paper=round(PAPER_S_PER_TOKEN / (LAYERS * layer_ms / 1e3), 3), build_s=row["build_s"])
    report.note(f"model_s_per_token = {LAYERS} x layer_step_ms (one layer: {HEADS} query heads, {KV_HEADS} KV heads, "
                f"head_dim {DIM}, top-100, static 128 + 512), the CPU's work only; the paper's {PAPER_S_PER_TOKEN} s "
                "is its whole decode step (RTX 4090 + 10-core i9-10900X), GPU work included; vs_paper = "
                f"{PAPER_S_PER_TOKEN} / model_s_per_token")
    report.note(f"vectors: {w.source} (Gemma 3 270M prefill of {args.capture_tokens} tokens of English text, layers "
                f"{GEMMA_GLOBAL_LAYERS}, RoPE-tiled to {args.tokens} and projected 256 -> {DIM}); torch threads "
                f"{args.threads}")
