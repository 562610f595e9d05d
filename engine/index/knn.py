"""Exact (and, beyond a size, approximate) nearest keys: what the graph build starts from.

`exact_knn` scores a chunk of queries at a time against every key (a torch matmul + topk, on the CPU or an
accelerator); `nearest_keys` runs it from numpy on a device, one search at a time on an accelerator;
`key_neighbours` gives each key its L2 neighbours among the others (exact, or through faiss HNSW beyond
EXACT_KEY_KNN_MAX keys on a CPU). Every function here returns (ids, scores), nearest first.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import faiss
import numpy as np
import torch

from engine.sizing import knn_chunk_rows

EXACT_KEY_KNN_MAX = 8192  # above this many keys (on a CPU) key neighbours come from HNSW, not a matmul
APPROX_KNN_LINKS = 16
APPROX_KNN_EF = 64


def exact_knn(keys: torch.Tensor, queries: torch.Tensor, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query. keys [N, D], queries [n, D] float32 tensors.

    metric "ip": largest inner product; "l2": smallest squared L2 distance.
    Returns (ids [n, k] int32 numpy, scores [n, k] float32 numpy: inner products or L2 distances). The scores are
    computed a chunk of queries at a time (engine.sizing.knn_chunk_rows: at most 256 MiB of them).
    """
    k = min(k, keys.shape[0])
    ids = np.empty((queries.shape[0], k), dtype=np.int32)
    vals = np.empty((queries.shape[0], k), dtype=np.float32)
    norms = (keys * keys).sum(1) if metric == "l2" else None
    rows = knn_chunk_rows(keys.shape[0])
    for start in range(0, queries.shape[0], rows):
        q = queries[start : start + rows]
        s = q @ keys.T  # [c, N]
        if norms is not None:
            s.mul_(2).sub_(norms)  # in place: no second [rows, N]; larger = closer (||q||^2 added back below)
        top = torch.topk(s, k, dim=1)
        ids[start : start + len(q)] = top.indices.cpu().numpy()
        v = top.values
        if norms is not None:
            v = ((q * q).sum(1, keepdim=True) - v).clamp_min(0)
        vals[start : start + len(q)] = v.cpu().numpy()
    return ids, vals


_ONE_DEVICE_KNN = threading.Lock()


def shares_one_accelerator(device: str) -> bool:
    """Whether the exact top-k searches on `device` must run one at a time (any device but the CPU's)."""
    return device != "cpu"


@contextlib.contextmanager
def device_turn(device: str) -> Iterator[None]:
    """Hold `device` for one build search (on an accelerator, one at a time: see nearest_keys)."""
    if not shares_one_accelerator(device):
        yield
        return
    with _ONE_DEVICE_KNN:
        yield


def nearest_keys(
    keys: np.ndarray, queries: np.ndarray | None, k: int, metric: str = "ip", device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """exact_knn on `device` from numpy: keys [N, D], queries [n, D] float32 (None: the keys themselves).

    On an accelerator the searches of every graph and layer being built take turns (a lock): they share one device
    with the prefill, which runs their kernels one after another anyway, and so the builds add at most one search's
    memory to the prefill's (engine.sizing.device_knn_bytes) however many graphs build at once.
    """
    if not shares_one_accelerator(device):
        on_keys = torch.from_numpy(keys)
        return exact_knn(on_keys, on_keys if queries is None else torch.from_numpy(queries), k, metric)
    with device_turn(device):
        on_keys = torch.from_numpy(keys).to(device)
        on_queries = on_keys if queries is None else torch.from_numpy(queries).to(device)
        found = exact_knn(on_keys, on_queries, k, metric)
        del on_keys, on_queries
        return found


def key_neighbours(keys: np.ndarray, k: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """L2 neighbours of every key among the others. keys [N, D] -> (ids [N, k], dist [N, k]),
    ids -1 padded where N - 1 < k.

    Exact up to EXACT_KEY_KNN_MAX keys on a CPU (faiss's exhaustive search, faster there than a torch matmul +
    topk: docs/benchmarks.md) and at any size on a GPU (a matmul there); beyond that on a CPU the O(N^2) scan
    dominates the whole build, so an HNSW graph over the keys gives them approximately.
    """
    if device == "cpu" and keys.shape[0] > EXACT_KEY_KNN_MAX:
        return approximate_key_neighbours(keys, k)
    nearest = min(k + 1, keys.shape[0])
    if device == "cpu":
        dist, ids = faiss.knn(keys, keys, nearest, metric=faiss.METRIC_L2)
        ids, dist = ids.astype(np.int32), np.maximum(dist, 0)
    else:
        ids, dist = nearest_keys(keys, None, nearest, metric="l2", device=device)
    ids, dist = ids[:, 1:], dist[:, 1:]  # drop self (distance 0; ties are harmless, pruning dedupes)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
    return np.ascontiguousarray(ids), np.ascontiguousarray(dist)


def approximate_key_neighbours(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """key_neighbours through faiss HNSW (L2): keys [N, D] -> (ids [N, k] int32, dist [N, k])."""
    n_keys, dim = keys.shape
    index = faiss.IndexHNSWFlat(dim, APPROX_KNN_LINKS)
    index.hnsw.efConstruction = APPROX_KNN_EF
    index.add(keys)
    search = faiss.SearchParametersHNSW(efSearch=max(APPROX_KNN_EF, 2 * k))
    dist, ids = index.search(keys, k + 1, params=search)
    not_self = ids != np.arange(n_keys)[:, None]
    order = np.argsort(~not_self, axis=1, kind="stable")[:, :k]  # others first, in distance order
    ids = np.take_along_axis(ids, order, axis=1).astype(np.int32)
    dist = np.take_along_axis(dist, order, axis=1)
    dist[ids < 0] = np.inf
    return np.ascontiguousarray(ids), np.ascontiguousarray(dist)
