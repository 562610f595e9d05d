"""The attention-aware graph index of RetrievalAttention (RoarGraph-style), method "retrieval".

One graph per KV head, trained on the queries of all its query heads (`IndexParams.graph_per_kv_head`, the
default), or one per query head as in the paper, over the keys of its KV head (see `kv_head_of`). Build, per
graph (`engine.index.graph_build`, from the exact nearest keys of `engine.index.knn`):

1. exact top-Nq keys of each training query (every `query_stride`-th prefill query) by inner product
   (chunked torch matmul + topk);
2. projection: each training query's nearest key is its pivot; the pivot links to the query's other
   neighbours, pruned by the RNG/occlusion rule with **L2 between keys** (better than inner product between
   keys for search by inner product: docs/benchmarks.md), up to `degree`; reverse edges follow, and a list
   that overflows ``2 * degree`` is pruned back to `degree`;
3. connectivity: the exact L2 nearest keys of every key are merged into its list (pruned again), which
   both joins the islands the projection leaves and makes the graph navigable between the query-hot
   regions; then any key still unreachable from the entry point is linked from its nearest reached key;
4. entry points: the key most often among the training queries' top-Nq (the "hottest" key), plus the
   nearest keys of a few mutually distant training queries (farthest-point sampling), so that a query
   aimed at a region far from the hottest key does not have to walk (or strand) to get there.

Search (`engine.index.graph_search`): best-first search by inner product from the entry points, keeping the
best max(effort, k) keys scanned and expanding the best unexpanded one; the answer is the best k of every key
scanned. k may differ per query head (the retrieval budget); a head whose queue holds SCAN_SHARE of the keys scores
them all instead (cheaper beyond that share of the keys). A call with many searches runs them in parallel, a
decode-sized call ([H, 1, D]) serially, which avoids waking numba's thread pool (and stalls of milliseconds when the
cores are busy), or with its heads shared among `search_threads` plain threads (engine.index.parallel).

Storage: CSR per graph, concatenated over the G graphs (G = H_kv or H): ``indptr [G, N+1]`` int64 offsets into
the flat ``indices`` int32; ``entries [G, E]`` int64 (-1 padded); ``graph_of [H]``. `to_arrays()` returns these.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numba
import numpy as np

from engine.index.base import IndexParams, SearchResult, kv_head_of, per_head_k, register_index
from engine.index.graph_build import N_ENTRIES, build_head_graph
from engine.index.graph_search import search_parallel, search_serial
from engine.index.kernels import search_workspace, thread_search_workspaces
from engine.index.knn import key_neighbours
from engine.index.parallel import default_search_threads, over_heads

METHOD = "retrieval"
PARALLEL_MIN_SEARCHES = 32  # fewer (head, query) searches per call run serially: see search()
SCAN_SHARE = 0.1  # a head whose queue holds this share of the keys scores them all instead (see search())


_WORKSPACES = threading.local()
WORKSPACES_KEPT = 4  # per thread: a decode step's layers share one (same N, effort, top-k)


def reused_workspace(shape: tuple, make):
    """The search scratch make(*shape), kept per thread and reused: a decode step's searches (every layer has
    the same N, effort and top-k) then touch warm memory instead of fresh pages. The kernels leave the visited
    array all False, so a kept workspace is ready for the next search."""
    kept = getattr(_WORKSPACES, "kept", None)
    if kept is None:
        kept = _WORKSPACES.kept = {}
    if shape not in kept:
        if len(kept) >= WORKSPACES_KEPT:
            kept.pop(next(iter(kept)))
        kept[shape] = make(*shape)
    return kept[shape]


class GraphIndex:
    """RetrievalAttention's attention-aware index over all query heads of one layer."""

    method: ClassVar[str] = METHOD

    def __init__(
        self,
        keys: np.ndarray,
        n_heads: int,
        indptr: np.ndarray,
        indices: np.ndarray,
        entries: np.ndarray,
        params: IndexParams,
    ) -> None:
        """keys [H_kv, N, D] float32 or float16, indptr [G, N+1] int64 (into indices), indices int32,
        entries [G, E] int64 (-1 padded), with G graphs: one per KV head (shared by its query heads) or one per
        query head. float16 keys are searched in place (as their uint16 bits), so the index adds no float32
        copy of the offloaded keys."""
        keys = np.asarray(keys)
        if keys.dtype == np.float16:
            self.keys = np.ascontiguousarray(keys).view(np.uint16)
        else:
            self.keys = np.ascontiguousarray(keys, dtype=np.float32)
        self.n_heads = n_heads
        self.n_kv_heads, self.n_keys, _ = self.keys.shape
        self.kv_of = kv_head_of(n_heads, self.n_kv_heads).astype(np.int64)
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.params = params
        n_graphs = self.indptr.shape[0]
        if self.indptr.shape[1:] != (self.n_keys + 1,) or n_graphs not in (n_heads, self.n_kv_heads):
            raise ValueError(
                f"indptr {self.indptr.shape} does not match {n_heads} query heads or {self.n_kv_heads} KV heads "
                f"x {self.n_keys} keys"
            )
        self.entries = np.ascontiguousarray(entries, dtype=np.int64).reshape(n_graphs, -1)
        self.graph_of = (np.arange(n_heads) if n_graphs == n_heads else self.kv_of).astype(np.int64)
        self.max_degree = int(np.diff(self.indptr, axis=1).max()) if self.n_keys else 0
        self.search_threads = params.threads or default_search_threads()

    def search(self, queries: np.ndarray, k: int | np.ndarray, effort: int | None = None) -> SearchResult:
        """queries [H, m, D] float32, k an int or [H] -> ids [H, m, max k] int64 best first (-1 padded, and past
        each head's k), scanned [H, m].

        A head searches with a queue of max(effort, its k) keys (`queue_sizes`), and one whose queue holds at least
        SCAN_SHARE of the keys scores every key instead: a graph search costs about its queue size in random reads and
        heap work, a scan streams the keys, and beyond that share the scan is the faster (docs/benchmarks.md,
        budget)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n_heads, m, _ = queries.shape
        if n_heads != self.n_heads:
            raise ValueError(f"expected queries for {self.n_heads} heads, got {n_heads}")
        ks = per_head_k(k, n_heads)
        k_max = int(ks.max(initial=0))
        if self.n_keys == 0 or k_max <= 0 or m == 0:
            nothing = np.full((n_heads, m, k_max), -1, dtype=np.int64)
            return SearchResult(nothing, np.zeros((n_heads, m), dtype=np.int64))
        sizes = queue_sizes(ks, effort or self.params.effort)
        scan = sizes >= SCAN_SHARE * self.n_keys
        arrays = (self.keys, self.kv_of, self.graph_of, self.indptr, self.indices, self.entries, sizes, ks, scan)
        # The kept workspaces are keyed by powers of two, so the layers' budgets and max degrees share them.
        room = (next_power_of_two(int(sizes.max())), max(64, next_power_of_two(self.max_degree + 1)))
        if n_heads * m >= PARALLEL_MIN_SEARCHES:  # one workspace per numba thread, kept like the serial one
            works = reused_workspace((numba.config.NUMBA_NUM_THREADS, self.n_keys, *room), thread_search_workspaces)
            ids, scanned = search_parallel(queries, *arrays, works)
        else:  # a decode step: its heads on `search_threads` threads (engine.index.parallel), each with its workspace
            def search_heads(heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                work = reused_workspace((self.n_keys, *room), search_workspace)
                part_ids, part_scanned = search_serial(
                    queries[heads], self.keys, self.kv_of[heads], self.graph_of[heads], self.indptr, self.indices,
                    self.entries, sizes[heads], ks[heads], scan[heads], work)
                return pad_ids(part_ids, k_max), part_scanned

            parts = over_heads(search_heads, n_heads, self.search_threads)
            ids, scanned = (np.concatenate([p[i] for p in parts]) for i in range(2))
        return SearchResult(ids, scanned)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """indptr [G, N+1] int64, indices int32, entries [G, E] int64, graph_of [H] int64 (the graph each query
        head searches); the keys are not included."""
        return {"indptr": self.indptr, "indices": self.indices, "entries": self.entries, "graph_of": self.graph_of}

    def degree_stats(self) -> tuple[float, int]:
        """(mean, max) out-degree over all graphs."""
        deg = np.diff(self.indptr, axis=1)
        return float(deg.mean()) if deg.size else 0.0, int(deg.max()) if deg.size else 0


def queue_sizes(ks: np.ndarray, effort: int) -> np.ndarray:
    """[H] int64 queue size per query head wanting ks [H] keys: the search effort, and at least k, so that a head
    retrieving more keys than the effort searches as far as it retrieves."""
    return np.maximum(ks, max(int(effort), 1)).astype(np.int64)


def pad_ids(ids: np.ndarray, width: int) -> np.ndarray:
    """ids [h, m, K] -> [h, m, width] (width >= K), -1 padded: parts of one search whose heads want different k."""
    if ids.shape[2] == width:
        return ids
    padded = np.full((*ids.shape[:2], width), -1, dtype=ids.dtype)
    padded[:, :, : ids.shape[2]] = ids
    return padded


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def build_graph_index(
    keys: np.ndarray,
    train_queries: np.ndarray,
    params: IndexParams,
    key_knn_k: int | None = None,
    n_entries: int = N_ENTRIES,
) -> GraphIndex:
    """Build the layer's index. keys [H_kv, N, D], train_queries [H, Nq, D] float32.

    With `params.graph_per_kv_head`, one graph per KV head is trained on the queries of all its query heads
    (interleaved by position), else one graph per query head on its own queries.
    key_knn_k: exact L2 neighbours per key merged into the graph (default: `params.degree`; 0 = none).
    """
    searched_keys = keys  # kept as given (float16 stays float16); the build works on a float32 copy
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    n_heads = train_queries.shape[0]
    n_kv, n_keys, _ = keys.shape
    kv_of = kv_head_of(n_heads, n_kv)
    stride = max(1, params.query_stride)
    # The latest prefill queries resemble decode queries best: stride from the end.
    train = np.ascontiguousarray(train_queries[:, ::-1][:, ::stride], dtype=np.float32)
    if params.graph_per_kv_head and n_heads != n_kv:
        group = n_heads // n_kv
        train = train.reshape(n_kv, group, -1, train.shape[-1]).transpose(0, 2, 1, 3).reshape(n_kv, -1, train.shape[-1])
        kv_of = np.arange(n_kv)
    n_graphs = train.shape[0]
    k_nn = params.degree if key_knn_k is None else key_knn_k
    workers = params.threads or numba.config.NUMBA_NUM_THREADS

    def neighbours(g: int) -> tuple[np.ndarray, np.ndarray] | None:
        return key_neighbours(keys[g], k_nn, params.knn_device) if k_nn > 0 and n_keys > 1 else None

    def graph(g: int, knn_of_kv: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return build_head_graph(keys[kv_of[g]], train[g], params, knn_of_kv[kv_of[g]], n_entries)

    if n_keys == 0:
        return GraphIndex(
            searched_keys,
            n_heads,
            np.zeros((n_graphs, 1), np.int64),
            np.zeros(0, np.int32),
            np.full((n_graphs, 1), -1, np.int64),
            params,
        )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        knn_of_kv = list(pool.map(neighbours, range(n_kv)))
        graphs = list(pool.map(lambda g: graph(g, knn_of_kv), range(n_graphs)))
    offsets = np.cumsum([0] + [len(ind) for _, ind, _ in graphs])
    indptr = np.stack([ptr + off for (ptr, _, _), off in zip(graphs, offsets[:-1], strict=True)])
    indices = np.concatenate([ind for _, ind, _ in graphs])
    entries = np.stack([e for _, _, e in graphs])
    return GraphIndex(searched_keys, n_heads, indptr, indices, entries, params)


def load_graph_index(arrays: dict[str, np.ndarray], keys: np.ndarray, params: IndexParams) -> GraphIndex:
    """Restore from `to_arrays()` over the same keys [H_kv, N, D]."""
    indptr = np.asarray(arrays["indptr"])
    n_heads = len(arrays["graph_of"]) if "graph_of" in arrays else indptr.shape[0]  # older saves: per query head
    return GraphIndex(keys, n_heads, indptr, arrays["indices"], arrays["entries"], params)


register_index(METHOD, build_graph_index, load_graph_index)
