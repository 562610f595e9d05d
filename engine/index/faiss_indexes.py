"""faiss baselines: methods "flat", "ivf" and "hnsw", one faiss index per KV head.

The query heads of a GQA group search their KV head's index together: all m queries of all g heads
of the group go in one faiss call ([g*m, D]).

- flat: IndexFlatIP, exact; scanned = N. Persists nothing but the head count (keys are re-added).
- ivf: IndexIVFFlat by inner product (spherical k-means), nlist = round(ivf_lists_per_sqrt_n * sqrt(N))
  clamped to [1, N // MIN_KEYS_PER_LIST]; nprobe = effort. scanned = keys in the probed lists only
  (the q·k products); the nlist q·centroid products come on top and are reported by `IvfIndex.nlist`.
  Persists the centroids; loading re-adds the keys (same assignment, same order, same results).
- hnsw: IndexHNSWFlat (L2) on keys augmented for MIPS: x = [k, sqrt(max‖k‖² - ‖k‖²)], query [q, 0],
  so ‖q - x‖² = ‖q‖² + max‖k‖² - 2 q·k ranks by inner product. M = hnsw_m, efSearch = effort.
  scanned = faiss.cvar.hnsw_stats.ndis of the batch divided evenly over its queries (faiss has no
  per-query count), capped at N. The stats are process-global: concurrent HNSW searches from several
  Python threads mix their counts (results stay correct). Persists the graph arrays, not the vectors.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import faiss
import numpy as np

from engine.index.base import IndexParams, SearchResult, keep_per_head, per_head_k, register_index

FLAT = "flat"
IVF = "ivf"
HNSW = "hnsw"

MIN_KEYS_PER_LIST = 8
HNSW_EF_CONSTRUCTION = 40  # faiss' default
_HNSW_GRAPH_FIELDS = ("levels", "offsets", "neighbors")
_HNSW_DTYPES = {
    "levels": np.int32,
    "offsets": np.uint64,
    "neighbors": np.int32,
}


def _set_threads(params: IndexParams) -> None:
    if params.threads > 0:
        faiss.omp_set_num_threads(params.threads)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class _PerKvHeadIndex:
    """Common part: grouping of query heads onto per-KV-head faiss indexes.

    Subclasses implement `_search_head(j, q [n, D], k, effort) -> (ids [n, k] int64, scanned [n] int64)`.
    """

    method: ClassVar[str] = ""

    def __init__(self, keys: np.ndarray, n_heads: int, params: IndexParams) -> None:
        self.n_heads = int(n_heads)
        self.n_kv_heads = int(keys.shape[0])
        self.n_keys = int(keys.shape[1])
        self.dim = int(keys.shape[2])
        self.params = params
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.n_heads} query heads cannot be grouped over {self.n_kv_heads} KV heads")

    def search(self, queries: np.ndarray, k: int | np.ndarray, effort: int | None = None) -> SearchResult:
        """queries [H, m, D], k an int or [H] -> ids [H, m, max k] (-1 padded, and past each head's k), scanned
        [H, m]. A KV head's query heads search max(their k) together and keep their own k."""
        n_heads, m, dim = queries.shape
        if n_heads != self.n_heads or dim != self.dim:
            raise ValueError(f"expected queries [{self.n_heads}, m, {self.dim}], got {queries.shape}")
        ks = per_head_k(k, n_heads)
        k = int(ks.max(initial=0))
        ids = np.full((n_heads, m, k), -1, dtype=np.int64)
        scanned = np.zeros((n_heads, m), dtype=np.int64)
        if self.n_keys == 0 or m == 0 or k <= 0:
            return SearchResult(ids, scanned)
        _set_threads(self.params)
        effort = self.params.effort if effort is None else int(effort)
        group = n_heads // self.n_kv_heads
        for j in range(self.n_kv_heads):
            heads = slice(j * group, (j + 1) * group)
            k_group = int(ks[heads].max())
            if k_group == 0:
                continue
            q = _f32(queries[heads].reshape(group * m, dim))
            head_ids, head_scanned = self._search_head(j, q, k_group, effort)
            ids[heads, :, :k_group] = head_ids.reshape(group, m, k_group)
            scanned[heads] = head_scanned.reshape(group, m)
        return SearchResult(keep_per_head(ids, ks), scanned)

    def _search_head(self, j: int, q: np.ndarray, k: int, effort: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- flat


class FlatIndex(_PerKvHeadIndex):
    """faiss IndexFlatIP per KV head (holds its own copy of the keys)."""

    method: ClassVar[str] = FLAT

    def __init__(self, keys: np.ndarray, n_heads: int, params: IndexParams) -> None:
        super().__init__(keys, n_heads, params)
        _set_threads(params)
        self._indexes = []
        for j in range(self.n_kv_heads):
            index = faiss.IndexFlatIP(self.dim)
            if self.n_keys:
                index.add(_f32(keys[j]))
            self._indexes.append(index)

    def _search_head(self, j: int, q: np.ndarray, k: int, effort: int) -> tuple[np.ndarray, np.ndarray]:
        _, ids = self._indexes[j].search(q, k)
        return ids, np.full(len(q), self.n_keys, dtype=np.int64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"n_heads": np.array(self.n_heads, dtype=np.int64)}


def build_flat(keys: np.ndarray, train_queries: np.ndarray, params: IndexParams) -> FlatIndex:
    """keys [H_kv, N, D]; train_queries [H, Nq, D] (only H is read)."""
    return FlatIndex(keys, train_queries.shape[0], params)


def load_flat(arrays: dict[str, np.ndarray], keys: np.ndarray, params: IndexParams) -> FlatIndex:
    return FlatIndex(keys, int(arrays["n_heads"]), params)


# ----------------------------------------------------------------------------------------------- ivf


def ivf_list_count(n_keys: int, lists_per_sqrt_n: float) -> int:
    """round(lists_per_sqrt_n * sqrt(N)), clamped to [1, max(1, N // MIN_KEYS_PER_LIST)]."""
    wanted = round(lists_per_sqrt_n * math.sqrt(max(n_keys, 0)))
    return int(min(max(wanted, 1), max(1, n_keys // MIN_KEYS_PER_LIST)))


class IvfIndex(_PerKvHeadIndex):
    """faiss IndexIVFFlat (inner product) per KV head.

    Built from keys [H_kv, N, D] either by training (k-means) or from saved centroids [H_kv, nlist, D].
    """

    method: ClassVar[str] = IVF

    def __init__(
        self, keys: np.ndarray, n_heads: int, params: IndexParams, centroids: np.ndarray | None = None
    ) -> None:
        super().__init__(keys, n_heads, params)
        _set_threads(params)
        self.nlist = (
            ivf_list_count(self.n_keys, params.ivf_lists_per_sqrt_n) if centroids is None else int(centroids.shape[1])
        )
        self._quantizers: list[faiss.IndexFlatIP] = []
        self._indexes: list[faiss.IndexIVFFlat] = []
        self._list_sizes: list[np.ndarray] = []  # [nlist] int64 per KV head
        if self.n_keys == 0:
            return
        for j in range(self.n_kv_heads):
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            x = _f32(keys[j])
            if centroids is None:
                index.cp.min_points_per_centroid = 1  # nlist is clamped above instead; no warnings
                index.train(x)
            else:
                quantizer.add(_f32(centroids[j]))
                index.is_trained = True
            index.add(x)
            invlists = index.invlists
            sizes = np.array([invlists.list_size(c) for c in range(self.nlist)], dtype=np.int64)
            self._quantizers.append(quantizer)
            self._indexes.append(index)
            self._list_sizes.append(sizes)

    def _search_head(self, j: int, q: np.ndarray, k: int, effort: int) -> tuple[np.ndarray, np.ndarray]:
        nprobe = int(min(max(effort, 1), self.nlist))
        index = self._indexes[j]
        dist_q, lists_q = self._quantizers[j].search(q, nprobe)
        # The python wrapper of search_preassigned refuses params; call the C++ method so that nprobe
        # travels with the call instead of mutating index.nprobe (safe for concurrent searches).
        search_params = faiss.SearchParametersIVF(nprobe=nprobe)
        lists_q = np.ascontiguousarray(lists_q, dtype=np.int64)
        dist_q = np.ascontiguousarray(dist_q, dtype=np.float32)
        dist = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        sp = faiss.swig_ptr
        index.search_preassigned_c(len(q), sp(q), k, sp(lists_q), sp(dist_q), sp(dist), sp(ids), False, search_params)
        probed = np.where(lists_q >= 0, self._list_sizes[j][np.maximum(lists_q, 0)], 0)
        return ids, probed.sum(axis=1).astype(np.int64)

    def centroids(self) -> np.ndarray:
        """[H_kv, nlist, D] float32."""
        if not self._quantizers:
            return np.zeros((self.n_kv_heads, 0, self.dim), dtype=np.float32)
        return np.stack([qz.reconstruct_n(0, self.nlist) for qz in self._quantizers]).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"n_heads": np.array(self.n_heads, dtype=np.int64), "centroids": self.centroids()}


def build_ivf(keys: np.ndarray, train_queries: np.ndarray, params: IndexParams) -> IvfIndex:
    """keys [H_kv, N, D]; train_queries [H, Nq, D] (only H is read: IVF trains on keys)."""
    return IvfIndex(keys, train_queries.shape[0], params)


def load_ivf(arrays: dict[str, np.ndarray], keys: np.ndarray, params: IndexParams) -> IvfIndex:
    centroids = arrays["centroids"]
    return IvfIndex(keys, int(arrays["n_heads"]), params, centroids if centroids.shape[1] else None)


# ---------------------------------------------------------------------------------------------- hnsw


def mips_augment(keys: np.ndarray) -> np.ndarray:
    """keys [N, D] -> [N, D+1] with last coordinate sqrt(max‖k‖² - ‖k‖²): L2 order = inner-product order."""
    keys = keys.astype(np.float32, copy=False)
    sq = np.einsum("nd,nd->n", keys, keys, dtype=np.float64)
    extra = np.sqrt(np.maximum(sq.max(initial=0.0) - sq, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([keys, extra[:, None]], axis=1))


class HnswIndex(_PerKvHeadIndex):
    """faiss IndexHNSWFlat per KV head on MIPS-augmented keys [N, D+1]."""

    method: ClassVar[str] = HNSW

    def __init__(
        self,
        keys: np.ndarray,
        n_heads: int,
        params: IndexParams,
        graphs: list[dict[str, np.ndarray]] | None = None,
    ) -> None:
        """graphs: per KV head, saved faiss HNSW arrays (levels, offsets, neighbors, ...); None builds."""
        super().__init__(keys, n_heads, params)
        _set_threads(params)
        self._indexes: list[faiss.IndexHNSWFlat] = []
        if self.n_keys == 0:
            return
        for j in range(self.n_kv_heads):
            index = faiss.IndexHNSWFlat(self.dim + 1, params.hnsw_m)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            x = mips_augment(keys[j])
            if graphs is None:
                index.add(x)
            else:
                index.storage.add(x)
                index.ntotal = self.n_keys
                hnsw = index.hnsw
                # assign_probas / cum_nneighbor_per_level come from the constructor (they depend on M only)
                for name in _HNSW_GRAPH_FIELDS:
                    saved = np.ascontiguousarray(graphs[j][name], dtype=_HNSW_DTYPES[name])
                    faiss.copy_array_to_vector(saved, getattr(hnsw, name))
                hnsw.entry_point = int(graphs[j]["entry_point"])
                hnsw.max_level = int(graphs[j]["max_level"])
            self._indexes.append(index)

    def _search_head(self, j: int, q: np.ndarray, k: int, effort: int) -> tuple[np.ndarray, np.ndarray]:
        q_aug = np.ascontiguousarray(np.concatenate([q, np.zeros((len(q), 1), np.float32)], axis=1))
        search_params = faiss.SearchParametersHNSW(efSearch=max(int(effort), 1))
        stats = faiss.cvar.hnsw_stats
        stats.reset()
        _, ids = self._indexes[j].search(q_aug, k, params=search_params)
        per_query = min(round(stats.ndis / len(q)), self.n_keys)
        return ids, np.full(len(q), per_query, dtype=np.int64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Graph arrays of every KV head (keys are not stored; the loader re-augments them)."""
        out: dict[str, np.ndarray] = {
            "n_heads": np.array(self.n_heads, dtype=np.int64),
            "hnsw_m": np.array(self.params.hnsw_m, dtype=np.int64),
        }
        if not self._indexes:
            return out
        graphs = [self._graph_arrays(index.hnsw) for index in self._indexes]
        out["levels"] = np.stack([g["levels"] for g in graphs])  # [H_kv, N] int32
        out["offsets"] = np.stack([g["offsets"] for g in graphs])  # [H_kv, N+1] uint64
        out["neighbor_counts"] = np.array([len(g["neighbors"]) for g in graphs], dtype=np.int64)
        out["neighbors"] = np.concatenate([g["neighbors"] for g in graphs])  # int32, all heads
        out["entry_point"] = np.array([g["entry_point"] for g in graphs], dtype=np.int64)
        out["max_level"] = np.array([g["max_level"] for g in graphs], dtype=np.int64)
        return out

    @staticmethod
    def _graph_arrays(hnsw: faiss.HNSW) -> dict[str, np.ndarray]:
        # Only faiss's own MaybeOwnedVector fields: std::vector<double>/<int> fields can come back as
        # another SWIG module's proxy (pymupdf registers std::vector<double> too) and fail to convert.
        arrays = {name: faiss.vector_to_array(getattr(hnsw, name)) for name in _HNSW_GRAPH_FIELDS}
        arrays["entry_point"] = np.array(hnsw.entry_point)
        arrays["max_level"] = np.array(hnsw.max_level)
        return arrays


def build_hnsw(keys: np.ndarray, train_queries: np.ndarray, params: IndexParams) -> HnswIndex:
    """keys [H_kv, N, D]; train_queries [H, Nq, D] (only H is read: HNSW is built on keys)."""
    return HnswIndex(keys, train_queries.shape[0], params)


def load_hnsw(arrays: dict[str, np.ndarray], keys: np.ndarray, params: IndexParams) -> HnswIndex:
    saved_m = int(arrays["hnsw_m"])
    if saved_m != params.hnsw_m:
        params = dataclasses.replace(params, hnsw_m=saved_m)
    if "levels" not in arrays:
        return HnswIndex(keys, int(arrays["n_heads"]), params, graphs=[])
    ends = np.cumsum(arrays["neighbor_counts"])
    starts = ends - arrays["neighbor_counts"]
    graphs = [
        {
            "levels": arrays["levels"][j],
            "offsets": arrays["offsets"][j],
            "neighbors": arrays["neighbors"][starts[j] : ends[j]],
            "entry_point": arrays["entry_point"][j],
            "max_level": arrays["max_level"][j],
        }
        for j in range(len(starts))
    ]
    return HnswIndex(keys, int(arrays["n_heads"]), params, graphs=graphs)


register_index(FLAT, build_flat, load_flat)
register_index(IVF, build_ivf, load_ivf)
register_index(HNSW, build_hnsw, load_hnsw)
