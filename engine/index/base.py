"""The small protocol every key index of one transformer layer follows.

One `LayerIndex` serves all query heads of a layer. Keys are shared per KV head (GQA): query head
``h`` searches the keys of KV head ``h // (n_heads // n_kv_heads)``. Ids returned are positions into
the layer's indexed keys (``0 .. n_keys-1``), never absolute token positions: the cache maps them.

Shapes (numpy, float32 unless said):
    keys           [H_kv, N, D]   post-RoPE keys of the indexed tokens, float32 or float16 (the cache's
                                  kv_dtype; the graph searches float16 in place, the baselines copy)
    train_queries  [H, Nq, D]     prefill queries of each query head (attention-aware indexes use them)
    queries        [H, m, D]      search queries, one batch of m per query head
    k              int, or [H] int64: keys wanted, the same for every query head or one per head (the retrieval
                   budget of engine.index.budget)
    ids            [H, m, max k]  int64, best first by inner product, -1 where fewer than that head's k were found
                   (always past a head's own k when k differs between heads)
    scanned        [H, m]         int64, number of q·k inner products computed for that search
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from engine.config import EngineConfig
from engine.sizing import GRAPH_DEGREE


@dataclass(frozen=True)
class IndexParams:
    """Build and search knobs shared by all index kinds (each kind reads the ones it uses).

    Attributes:
        effort: the default search-effort knob: queue size for the graph, efSearch for HNSW,
            nprobe for IVF; ignored by exact and flat.
        n_neighbors_per_query: graph build: exact top-Nq keys per training query.
        degree: graph build: out-degree M after projection.
        query_stride: graph build: use every `query_stride`-th training query (the cache already
            samples them).
        hnsw_m: HNSW links per node.
        ivf_lists_per_sqrt_n: IVF: number of lists = this x sqrt(N).
        threads: worker threads for build/search (0 = library default).
        knn_device: where the graph build's exact nearest-neighbour matmuls run ("cpu", "cuda").
        graph_per_kv_head: graph build: one graph per KV head, trained on the queries of all its query
            heads, instead of one per query head (the paper's choice): G times less index memory for G query heads
            per KV head (recall per key scanned: docs/benchmarks.md).
    """

    effort: int = EngineConfig.search_effort
    n_neighbors_per_query: int = 32
    degree: int = GRAPH_DEGREE
    query_stride: int = 1
    hnsw_m: int = 32
    ivf_lists_per_sqrt_n: float = 4.0
    threads: int = 0
    knn_device: str = "cpu"
    graph_per_kv_head: bool = True


@dataclass(frozen=True)
class SearchResult:
    """ids [H, m, k] int64 (best first, -1 padded); scanned [H, m] int64 inner products computed."""

    ids: np.ndarray
    scanned: np.ndarray


class LayerIndex(Protocol):
    """All query heads of one layer, searchable by inner product."""

    method: ClassVar[str]
    n_heads: int
    n_kv_heads: int
    n_keys: int

    def search(self, queries: np.ndarray, k: int | np.ndarray, effort: int | None = None) -> SearchResult:
        """queries [H, m, D] float32 -> top-k ids per head and query; k an int or [H] per query head (see the module
        docstring). An index that cannot search per head can search max(k) and apply `keep_per_head`."""
        ...

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to restore the index except the keys (which the KV store holds)."""
        ...


IndexBuilder = Callable[[np.ndarray, np.ndarray, IndexParams], LayerIndex]
IndexLoader = Callable[[dict[str, np.ndarray], np.ndarray, IndexParams], LayerIndex]

_BUILDERS: dict[str, IndexBuilder] = {}
_LOADERS: dict[str, IndexLoader] = {}


def register_index(method: str, builder: IndexBuilder, loader: IndexLoader) -> None:
    """Make `method` available to `build_layer_index` and `load_layer_index`."""
    _BUILDERS[method] = builder
    _LOADERS[method] = loader


def index_methods() -> list[str]:
    return sorted(_BUILDERS)


def build_layer_index(
    method: str, keys: np.ndarray, train_queries: np.ndarray, params: IndexParams | None = None
) -> LayerIndex:
    """Build a `method` index over keys [H_kv, N, D] trained on train_queries [H, Nq, D]."""
    if method not in _BUILDERS:
        raise ValueError(f"unknown index method {method!r}; choose one of {index_methods()}")
    return _BUILDERS[method](keys, train_queries, params or IndexParams())


def load_layer_index(
    method: str, arrays: dict[str, np.ndarray], keys: np.ndarray, params: IndexParams | None = None
) -> LayerIndex:
    """Restore an index saved with `to_arrays()` over the same keys [H_kv, N, D]."""
    if method not in _LOADERS:
        raise ValueError(f"unknown index method {method!r}; choose one of {index_methods()}")
    return _LOADERS[method](arrays, keys, params or IndexParams())


def per_head_k(k: int | np.ndarray, n_heads: int) -> np.ndarray:
    """k (an int, or one per query head) as [H] int64, checked."""
    ks = np.broadcast_to(np.asarray(k, dtype=np.int64), (n_heads,)).copy()
    if ks.ndim != 1 or (ks < 0).any():
        raise ValueError(f"k must be a count or one count per query head ({n_heads}), not {k!r}")
    return ks


def keep_per_head(ids: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """ids [H, m, K] best first, ks [H] -> ids with every id past its head's k set to -1 (in place)."""
    if ids.shape[2]:
        past = np.arange(ids.shape[2])[None, :] >= ks[:, None]  # [H, K]
        ids[np.broadcast_to(past[:, None, :], ids.shape)] = -1
    return ids


def kv_head_of(n_heads: int, n_kv_heads: int) -> np.ndarray:
    """[H] int: the KV head each query head reads (GQA grouping, as transformers' repeat_kv)."""
    if n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads cannot be grouped over {n_kv_heads} KV heads")
    return np.arange(n_heads) // (n_heads // n_kv_heads)
