"""Method "qgraph": the attention-aware graph with int8-coded keys in its neighbour lists.

The graph is exactly method "retrieval"'s (engine.index.graph, the same build), which stays the reference. Each edge
of the CSR also carries its neighbour's key coded in int8 with per-dimension scales (one set per graph, from the
largest |k_d| of its keys), stored edge-aligned: codes [E, D] int8, so expanding a node reads its neighbours' codes
as one contiguous block. The search (engine.index.qgraph_search) estimates each unvisited neighbour's q·k from its
code and computes the exact q·k (a random read of the float16 key) only where the estimate, widened by `slack` times
its error bound, could enter the results (a key rejected on its estimate is not estimated again). At slack 1 the
results are the exact graph's, with fewer exact q·k; below 1 fewer still, at some recall (docs/benchmarks.md,
compressed neighbour lists).

`SearchResult.scanned` counts exact q·k; `last_estimated` [H, m] holds the last search's code estimates. Memory: D
bytes per edge, about degree x D per key (e.g. 20 x 64 B for SmolLM2): more than the float16 keys themselves.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from engine.index.base import IndexParams, SearchResult, per_head_k, register_index
from engine.index.graph import (
    SCAN_SHARE,
    GraphIndex,
    build_graph_index,
    next_power_of_two,
    pad_ids,
    queue_sizes,
    reused_workspace,
)
from engine.index.kernels import search_workspace
from engine.index.parallel import default_search_threads, over_heads
from engine.index.qgraph_search import search_coded_serial

METHOD = "qgraph"
CODE_MAX = 127
BOUND_SAFETY = 1.01  # covers float32 rounding in the estimate and the exact dot product
DEFAULT_SLACK = 1.0  # 1: the exact graph's results (lossless); below 1: fewer exact q·k, some recall lost


def code_scales(keys: np.ndarray) -> np.ndarray:
    """keys [N, D] -> per-dimension scales [D] float32: the largest |k_d| maps to code 127 (1 where all are 0)."""
    top = np.abs(keys).max(axis=0) if len(keys) else np.zeros(keys.shape[1], np.float32)
    return np.where(top > 0, top / CODE_MAX, 1.0).astype(np.float32)


def encode_edges(keys: np.ndarray, indices: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """keys [N, D] float32, indices [e] int (the edges' target keys), scales [D] -> codes [e, D] int8."""
    codes = np.rint(keys[indices] / scales)
    return np.clip(codes, -CODE_MAX, CODE_MAX).astype(np.int8)


class CodedGraphIndex:
    """The graph index of a layer plus int8 codes of each edge's neighbour key."""

    method: ClassVar[str] = METHOD

    def __init__(self, graph: GraphIndex, codes: np.ndarray, scales: np.ndarray, slack: float = DEFAULT_SLACK,
                 threads: int | None = None) -> None:
        """graph: the exact graph; codes [E, D] int8 aligned with graph.indices; scales [G, D] float32."""
        self.graph = graph
        self.codes = np.ascontiguousarray(codes, dtype=np.int8)
        self.scales = np.ascontiguousarray(scales, dtype=np.float32)
        if self.codes.shape[0] != graph.indices.shape[0] or self.scales.shape[0] != graph.indptr.shape[0]:
            raise ValueError(f"codes {self.codes.shape} / scales {self.scales.shape} do not match the graph's "
                             f"{graph.indices.shape[0]} edges and {graph.indptr.shape[0]} graphs")
        self.n_heads, self.n_kv_heads, self.n_keys = graph.n_heads, graph.n_kv_heads, graph.n_keys
        self.slack = slack
        self.threads = threads or graph.params.threads or default_search_threads()
        self.last_estimated = np.zeros((0, 0), dtype=np.int64)

    def search(self, queries: np.ndarray, k: int | np.ndarray, effort: int | None = None) -> SearchResult:
        """queries [H, m, D] float32, k an int or [H] -> ids [H, m, max k] int64 best first (-1 padded, and past each
        head's k), scanned [H, m] exact q·k. The graph's queue sizes and scan choice (GraphIndex.search)."""
        g = self.graph
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n_heads, m, _ = queries.shape
        if n_heads != self.n_heads:
            raise ValueError(f"expected queries for {self.n_heads} heads, got {n_heads}")
        ks = per_head_k(k, n_heads)
        k_max = int(ks.max(initial=0))
        if self.n_keys == 0 or k_max <= 0 or m == 0:
            return g.search(queries, ks, effort)
        sizes = queue_sizes(ks, effort or g.params.effort)
        scan = sizes >= SCAN_SHARE * self.n_keys
        scaled = np.ascontiguousarray(queries * self.scales[g.graph_of][:, None, :])
        margins = (self.slack * BOUND_SAFETY * 0.5) * np.abs(scaled).sum(axis=2, dtype=np.float32)
        room = (next_power_of_two(int(sizes.max())), max(64, next_power_of_two(g.max_degree + 1)))

        def search_heads(heads: np.ndarray):
            work = reused_workspace((self.n_keys, *room), search_workspace)
            part_ids, part_scanned, part_estimated = search_coded_serial(
                queries, scaled, margins, g.keys, g.kv_of, g.graph_of, g.indptr, g.indices, self.codes, g.entries,
                sizes, ks, scan, work, heads)
            return pad_ids(part_ids, k_max), part_scanned, part_estimated

        parts = over_heads(search_heads, n_heads, self.threads)
        ids, scanned, estimated = (np.concatenate([p[i] for p in parts]) for i in range(3))
        self.last_estimated = estimated
        return SearchResult(ids, scanned)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The graph's arrays plus codes [E, D] int8 and scales [G, D] float32 (the keys are not included)."""
        return self.graph.to_arrays() | {"codes": self.codes, "scales": self.scales}


def graph_key_heads(graph: GraphIndex) -> np.ndarray:
    """[G] int: the KV head whose keys graph g links (graphs per KV head, or per query head)."""
    n_graphs = graph.indptr.shape[0]
    if n_graphs == graph.n_kv_heads:
        return np.arange(n_graphs)
    return graph.kv_of


def code_graph(graph: GraphIndex) -> tuple[np.ndarray, np.ndarray]:
    """(codes [E, D] int8, scales [G, D]) for every edge of `graph` (its keys as float32)."""
    keys = graph.keys.view(np.float16).astype(np.float32) if graph.keys.dtype == np.uint16 else graph.keys
    heads = graph_key_heads(graph)
    scales = np.stack([code_scales(keys[h]) for h in heads]) if len(heads) else np.zeros((0, keys.shape[2]))
    codes = np.empty((graph.indices.shape[0], keys.shape[2]), dtype=np.int8)
    for g, h in enumerate(heads):
        first, last = graph.indptr[g, 0], graph.indptr[g, -1]
        codes[first:last] = encode_edges(keys[h], graph.indices[first:last], scales[g])
    return codes, scales.astype(np.float32)


def build_coded_graph_index(keys: np.ndarray, train_queries: np.ndarray, params: IndexParams) -> CodedGraphIndex:
    """The "retrieval" graph over keys [H_kv, N, D], trained on train_queries [H, Nq, D], with its edges coded."""
    graph = build_graph_index(keys, train_queries, params)
    return CodedGraphIndex(graph, *code_graph(graph))


def load_coded_graph_index(arrays: dict[str, np.ndarray], keys: np.ndarray, params: IndexParams) -> CodedGraphIndex:
    """Restore from `to_arrays()` over the same keys [H_kv, N, D]."""
    from engine.index.graph import load_graph_index

    graph = load_graph_index(arrays, keys, params)
    return CodedGraphIndex(graph, arrays["codes"], arrays["scales"])


register_index(METHOD, build_coded_graph_index, load_coded_graph_index)
