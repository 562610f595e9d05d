"""Tune the attention-aware graph index ("retrieval") on real post-RoPE vectors.

Protocol (design.md section 1): per layer, index = keys outside the first 128 and last 512 prompt
positions; test queries = the last 64 positions' queries; training queries = the prefill queries
(all positions, or -- the honest variant -- only those before the last 64). Reports recall@100
against exact inner-product top-100, the fraction of keys scanned, build time per layer and search
time per decode-shaped call ([H, 1, D]).

    python -m engine.bench.graph_tuning [--tokens 3500] [--layers 0,5,...] [--cache qk.npz]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine.index.base import IndexParams
from engine.index.graph import GraphIndex, build_graph_index

N_SINK, N_WINDOW, N_TEST, TOP_K = 128, 512, 64, 100
# What this benchmark chose (see the sweep): degree 16, Nq 32, effort 100; every query the cache kept.
PROPOSED = IndexParams(effort=100, n_neighbors_per_query=32, degree=16, query_stride=1)


@dataclass
class Layer:
    """queries [H, T, D], keys [H_kv, T, D] float32 of one layer."""

    queries: np.ndarray
    keys: np.ndarray


def load_vectors(tokens: int, cache: Path | None) -> list[Layer]:
    """Every layer's queries/keys for the first `tokens` tokens of pydoc's topics text."""
    if cache is not None and cache.exists():
        data = np.load(cache)
        n_layers = sum(1 for name in data.files if name.startswith("k"))
        return [
            Layer(data[f"q{i}"][:, :tokens].astype(np.float32), data[f"k{i}"][:, :tokens].astype(np.float32))
            for i in range(n_layers)
        ]
    from pydoc_data.topics import topics

    from engine.bench.vectors import capture_qk
    from engine.model import load_model

    loaded = load_model("default", device="cpu", dtype="float32")
    tok, model = loaded.tokenizer, loaded.model
    ids = tok("\n\n".join(topics.values()), return_tensors="pt").input_ids[0][:tokens]
    layers = [Layer(v.queries, v.keys) for v in capture_qk(model, ids).values()]
    if cache is not None:
        arrays = {f"q{i}": ly.queries.astype(np.float16) for i, ly in enumerate(layers)}
        arrays |= {f"k{i}": ly.keys.astype(np.float16) for i, ly in enumerate(layers)}
        np.savez(cache, **arrays)
    return layers


def split(layer: Layer, honest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (index keys [H_kv, N, D], training queries [H, n, D], test queries [H, 64, D])."""
    t = layer.keys.shape[1]
    keys = np.ascontiguousarray(layer.keys[:, N_SINK : t - N_WINDOW])
    train = layer.queries[:, : t - N_TEST] if honest else layer.queries
    return keys, np.ascontiguousarray(train), np.ascontiguousarray(layer.queries[:, t - N_TEST :])


def exact_ids(keys: np.ndarray, queries: np.ndarray, kv_of: np.ndarray, k: int) -> np.ndarray:
    """[H, m, k] exact top-k ids by inner product."""
    scores = np.einsum("hmd,hnd->hmn", queries, keys[kv_of])
    return np.argsort(-scores, axis=2)[:, :, :k]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean |found ∩ exact| / k over heads and queries; found, exact [H, m, k]."""
    hits = [
        len(np.intersect1d(f, e))
        for f, e in zip(found.reshape(-1, found.shape[-1]), exact.reshape(-1, exact.shape[-1]), strict=True)
    ]
    return float(np.mean(hits)) / exact.shape[-1]


def decode_call_time(index: GraphIndex, queries: np.ndarray, effort: int, repeats: int = 64) -> float:
    """Seconds per search([H, 1, D], k=100) call, median over `repeats` test queries."""
    times = []
    for i in range(repeats):
        q = np.ascontiguousarray(queries[:, i % queries.shape[1] : i % queries.shape[1] + 1])
        t0 = time.perf_counter()
        index.search(q, TOP_K, effort)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def evaluate(
    layers: list[Layer],
    layer_ids: list[int],
    params: IndexParams,
    efforts: list[int],
    honest: bool,
    no_training: bool = False,
    **build_kw,
) -> dict:
    """Build each layer's index (build_kw go to build_graph_index) and measure; means over layers.

    no_training: build without training queries (a plain L2 key graph), to see what they add.
    """
    rec = {e: [] for e in efforts}
    scan = {e: [] for e in efforts}
    builds, calls, n_keys = [], {e: [] for e in efforts}, 0
    for li in layer_ids:
        keys, train, test = split(layers[li], honest)
        if no_training:
            train = train[:, :0]
        t0 = time.perf_counter()
        index = build_graph_index(keys, train, params, **build_kw)
        builds.append(time.perf_counter() - t0)
        exact = exact_ids(keys, test, index.kv_of, TOP_K)
        n_keys = keys.shape[1]
        for e in efforts:
            res = index.search(test, TOP_K, e)
            rec[e].append(recall(res.ids, exact))
            scan[e].append(res.scanned.mean() / n_keys)
            calls[e].append(decode_call_time(index, test, e, repeats=16))
    return {
        "n_keys": n_keys,
        "build_s": float(np.mean(builds)),
        "rows": [(e, float(np.mean(rec[e])), float(np.mean(scan[e])), float(np.mean(calls[e]))) for e in efforts],
        "min_recall": {e: float(np.min(rec[e])) for e in efforts},
    }


def report(title: str, res: dict) -> None:
    print(f"\n## {title}  (N={res['n_keys']}, build {res['build_s'] * 1e3:.0f} ms/layer)")
    print("| effort | recall@100 | min layer recall | scanned | search µs/call (H×1 query) |")
    print("|---|---|---|---|---|")
    for e, r, s, c in res["rows"]:
        print(f"| {e} | {r:.3f} | {res['min_recall'][e]:.3f} | {s:.1%} | {c * 1e6:.0f} |")


def sweep_variants(base: IndexParams) -> list[tuple[str, IndexParams, dict]]:
    """(title, params, evaluate kwargs) of the build variants compared against the defaults."""
    variants: list[tuple[str, IndexParams, dict]] = [
        ("no training queries (plain L2 key graph)", base, {"no_training": True}),
        ("no key-kNN merge (projection + reachability fix only)", base, {"key_knn_k": 0}),
        ("key-kNN k = 2 x degree", base, {"key_knn_k": 2 * base.degree}),
        ("1 entry point", base, {"n_entries": 1}),
        ("4 entry points", base, {"n_entries": 4}),
        ("32 entry points", base, {"n_entries": 32}),
    ]
    variants += [(f"degree {d}", replace(base, degree=d), {}) for d in (12, 24, 32)]
    variants += [(f"Nq {nq}", replace(base, n_neighbors_per_query=nq), {}) for nq in (16, 64, 100)]
    variants += [(f"query_stride {st}", replace(base, query_stride=st), {}) for st in (1, 2, 8)]
    return variants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=3500)
    ap.add_argument("--layers", default="0,3,6,9,12,15,18,21,24,27,29", help='comma list or "all"')
    ap.add_argument("--efforts", default="16,24,32,48,64,100,160,256")
    ap.add_argument("--cache", type=Path, default=None, help="npz of captured vectors (written if absent)")
    ap.add_argument("--sweep", action="store_true", help="also sweep build parameters (honest training)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    layers = load_vectors(args.tokens, args.cache)
    layer_ids = list(range(len(layers))) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    efforts = [int(x) for x in args.efforts.split(",")]
    base = IndexParams()
    evaluate(layers, layer_ids[:1], base, efforts[:1], honest=False)  # numba compiles outside the timings
    for title, params in (("base.py defaults", base), ("proposed defaults", PROPOSED)):
        report(f"{title} {params}, train = all prefill queries", evaluate(layers, layer_ids, params, efforts, False))
        report(
            f"{title}, train = prefill queries before the last 64 (honest)",
            evaluate(layers, layer_ids, params, efforts, honest=True),
        )
    if args.sweep:
        for title, params, kw in sweep_variants(PROPOSED):
            report(f"{title} (honest)", evaluate(layers, layer_ids, params, efforts, honest=True, **kw))


if __name__ == "__main__":
    main()
