"""The attention-aware graph index of RetrievalAttention (RoarGraph-style), method "retrieval".

One graph per KV head, trained on the queries of all its query heads (`IndexParams.graph_per_kv_head`, the
default), or one per query head as in the paper, over the keys of its KV head (see `kv_head_of`). Build, per
graph:

1. exact top-Nq keys of each training query (every `query_stride`-th prefill query) by inner product
   (chunked torch matmul + topk);
2. projection: each training query's nearest key is its pivot; the pivot links to the query's other
   neighbours, pruned by the RNG/occlusion rule with **L2 between keys** (measured better than inner
   product between keys for search by inner product), up to `degree`; reverse edges follow, and a list
   that overflows ``2 * degree`` is pruned back to `degree`;
3. connectivity: the exact L2 nearest keys of every key are merged into its list (pruned again), which
   both joins the islands the projection leaves and makes the graph navigable between the query-hot
   regions; then any key still unreachable from the entry point is linked from its nearest reached key;
4. entry points: the key most often among the training queries' top-Nq (the "hottest" key), plus the
   nearest keys of a few mutually distant training queries (farthest-point sampling), so that a query
   aimed at a region far from the hottest key does not have to walk (or strand) to get there.

Search (`engine.index.graph_search`): best-first search by inner product from the entry points, keeping the
best `effort` keys scanned and expanding the best unexpanded one; the answer is the best k of every key
scanned. A call with many searches runs them in parallel, a decode-sized call ([H, 1, D]) serially, which avoids waking
the thread pool (and stalls of milliseconds when the cores are busy).

Storage: CSR per graph, concatenated over the G graphs (G = H_kv or H): ``indptr [G, N+1]`` int64 offsets into
the flat ``indices`` int32; ``entries [G, E]`` int64 (-1 padded); ``graph_of [H]``. `to_arrays()` returns these.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import faiss
import numba
import numpy as np
import torch
from numba import njit

from engine.index.base import IndexParams, SearchResult, kv_head_of, register_index
from engine.index.graph_search import _search_parallel, _search_serial, _thread_workspaces, _workspace
from engine.sizing import knn_chunk_rows

METHOD = "retrieval"
OVERFLOW_SLACK = 2  # a node's list may grow to this x degree (reverse edges) before it is re-pruned
N_ENTRIES = 16  # search seeds per head (see _choose_entries)
EXACT_KEY_KNN_MAX = 8192  # above this many keys (on a CPU) key neighbours come from HNSW, not a matmul
APPROX_KNN_LINKS = 16
APPROX_KNN_EF = 64
CONNECT_CANDIDATES = 16  # nearest reached keys kept per unreachable key (the first with a free slot links it)
CONNECT_BATCH = 256  # unreachable keys whose nearest reached keys come from one matmul
PARALLEL_MIN_SEARCHES = 32  # fewer (head, query) searches per call run serially: see search()
# The build's kernels may reorder float sums (so LLVM vectorises the L2 distances: 3.5x faster projection and merge
# at 128K keys, the same graph) but must not assume away infinities: padded distances are inf.
FINITE_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


# ----------------------------------------------------------------------------- numba kernels (build)


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _l2(a: np.ndarray, b: np.ndarray) -> float:
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        d = a[i] - b[i]
        s += d * d
    return s


@njit(cache=True, nogil=True, fastmath=FINITE_FASTMATH)
def _prune(keys, cand, cand_d, n_cand, m, out):
    """RNG/occlusion prune. cand[:n_cand] (int32) with L2 distances cand_d to the node, any order.

    Keeps a candidate unless an already kept one is closer to it than the node is, up to m; then fills
    up to m with the nearest remaining candidates. Writes out[:count], nearest first; returns count.
    """
    order = np.argsort(cand_d[:n_cand])
    kept = np.zeros(n_cand, dtype=np.bool_)
    count = 0
    for t in range(n_cand):
        if count >= m:
            break
        c = cand[order[t]]
        dc = cand_d[order[t]]
        ok = True
        for s in range(count):
            if _l2(keys[out[s]], keys[c]) < dc:
                ok = False
                break
        if ok:
            out[count] = c
            kept[t] = True
            count += 1
    for t in range(n_cand):
        if count >= m:
            break
        if not kept[t]:
            out[count] = cand[order[t]]
            count += 1
    return count


@njit(cache=True, nogil=True, fastmath=FINITE_FASTMATH)
def _add_edge(keys, adj, deg, src, dst, m, buf_i, buf_d):
    """Add src -> dst unless present; an overflowing list is re-pruned to m (dst competes too)."""
    d = deg[src]
    for j in range(d):
        if adj[src, j] == dst:
            return
    if d < adj.shape[1]:
        adj[src, d] = dst
        deg[src] = d + 1
        return
    for j in range(d):
        buf_i[j] = adj[src, j]
        buf_d[j] = _l2(keys[src], keys[buf_i[j]])
    buf_i[d] = dst
    buf_d[d] = _l2(keys[src], keys[dst])
    out = np.empty(m, dtype=np.int32)
    cnt = _prune(keys, buf_i, buf_d, d + 1, m, out)
    for j in range(cnt):
        adj[src, j] = out[j]
    deg[src] = cnt


@njit(cache=True, nogil=True, fastmath=FINITE_FASTMATH)
def _project(keys, knn, m, cap):
    """Bipartite projection. keys [N, D], knn [n, Nq] int32 (best first) -> adj [N, cap], deg [N]."""
    n_keys = keys.shape[0]
    n, nq = knn.shape
    adj = np.full((n_keys, cap), -1, dtype=np.int32)
    deg = np.zeros(n_keys, dtype=np.int32)
    order = np.argsort(knn[:, 0], kind="mergesort")
    stamp = np.full(n_keys, -1, dtype=np.int32)
    pool = np.empty(n_keys, dtype=np.int32)
    pool_d = np.empty(n_keys, dtype=np.float32)
    out = np.empty(m, dtype=np.int32)
    i = 0
    while i < n:
        p = knn[order[i], 0]
        cnt = 0
        j = i
        while j < n and knn[order[j], 0] == p:
            for t in range(1, nq):
                c = knn[order[j], t]
                if c != p and stamp[c] != p:
                    stamp[c] = p
                    pool[cnt] = c
                    pool_d[cnt] = _l2(keys[p], keys[c])
                    cnt += 1
            j += 1
        kept = _prune(keys, pool, pool_d, cnt, m, out)
        for t in range(kept):
            adj[p, t] = out[t]
        deg[p] = kept
        i = j
    _add_reverse_edges(keys, adj, deg, m)
    return adj, deg


@njit(cache=True, nogil=True, fastmath=FINITE_FASTMATH)
def _add_reverse_edges(keys, adj, deg, m):
    """For every edge p -> c of the lists as they are now, add c -> p (re-pruning lists that overflow)."""
    n_keys, cap = adj.shape
    fwd = adj.copy()
    fwd_deg = deg.copy()
    buf_i = np.empty(cap + 1, dtype=np.int32)
    buf_d = np.empty(cap + 1, dtype=np.float32)
    for p in range(n_keys):
        for t in range(fwd_deg[p]):
            _add_edge(keys, adj, deg, fwd[p, t], p, m, buf_i, buf_d)


@njit(cache=True, nogil=True, fastmath=FINITE_FASTMATH)
def _merge_knn(keys, adj, deg, knn, knn_d, m):
    """Merge each key's exact L2 neighbours knn [N, K] (distances knn_d) into its list, prune to m,
    then add the reverse edges of the merged lists."""
    n_keys, cap = adj.shape
    k = knn.shape[1]
    cand = np.empty(cap + k, dtype=np.int32)
    cand_d = np.empty(cap + k, dtype=np.float32)
    out = np.empty(m, dtype=np.int32)
    stamp = np.full(n_keys, -1, dtype=np.int32)
    new_adj = np.full((n_keys, cap), -1, dtype=np.int32)
    new_deg = np.zeros(n_keys, dtype=np.int32)
    for x in range(n_keys):
        cnt = 0
        stamp[x] = x
        for t in range(deg[x]):
            c = adj[x, t]
            if stamp[c] != x:
                stamp[c] = x
                cand[cnt] = c
                cand_d[cnt] = _l2(keys[x], keys[c])
                cnt += 1
        for t in range(k):
            c = knn[x, t]
            if c >= 0 and stamp[c] != x:
                stamp[c] = x
                cand[cnt] = c
                cand_d[cnt] = knn_d[x, t]
                cnt += 1
        kept = _prune(keys, cand, cand_d, cnt, m, out)
        for t in range(kept):
            new_adj[x, t] = out[t]
        new_deg[x] = kept
    _add_reverse_edges(keys, new_adj, new_deg, m)
    return new_adj, new_deg


@njit(cache=True, nogil=True)
def _mark_reached(adj, deg, start, seen, queue):
    """BFS from start over keys not yet seen, marking them in seen [N] bool (start included)."""
    seen[start] = True
    queue[0] = start
    head, tail = 0, 1
    while head < tail:
        x = queue[head]
        head += 1
        for t in range(deg[x]):
            c = adj[x, t]
            if not seen[c]:
                seen[c] = True
                queue[tail] = c
                tail += 1


@njit(cache=True, nogil=True)
def _reached_from(adj, deg, entry):
    """[N] bool: the keys reachable from entry over the lists as they are now."""
    seen = np.zeros(adj.shape[0], dtype=np.bool_)
    _mark_reached(adj, deg, entry, seen, np.empty(adj.shape[0], dtype=np.int32))
    return seen


@njit(cache=True, nogil=True)
def _link(keys, adj, deg, m, x, parent, seen, buf_i, buf_d, queue):
    """Add parent -> x and x -> parent, then mark what x reaches in seen."""
    adj[parent, deg[parent]] = x
    deg[parent] += 1
    _add_edge(keys, adj, deg, x, parent, m, buf_i, buf_d)
    _mark_reached(adj, deg, x, seen, queue)


@njit(cache=True, nogil=True)
def _link_unreached(keys, adj, deg, entry, m, batch, candidates, seen):
    """Link each key of batch [B] (in order) that is still unreachable from the first of its candidates [B, C]
    (keys reached before the batch, nearest first, -1 padded) with a free slot, and back; when all are full,
    from the nearest reached key with a free slot, found by a scan (or, if none has one, a slot taken over at
    entry). seen [N] bool is updated. Returns how many keys were linked."""
    n_keys, cap = adj.shape
    buf_i = np.empty(cap + 1, dtype=np.int32)
    buf_d = np.empty(cap + 1, dtype=np.float32)
    queue = np.empty(n_keys, dtype=np.int32)
    linked = 0
    for b in range(batch.shape[0]):
        x = batch[b]
        if seen[x]:  # an earlier link reached it
            continue
        parent = -1
        for t in range(candidates.shape[1]):
            c = candidates[b, t]
            if c >= 0 and deg[c] < cap:
                parent = c
                break
        if parent < 0:
            best_d = np.float32(np.inf)
            for i in range(n_keys):
                if seen[i] and deg[i] < cap:
                    d = _l2(keys[x], keys[i])
                    if d < best_d:
                        parent, best_d = i, d
        if parent < 0:  # every reached list is full (never seen in practice): take over a last slot
            parent = entry
            deg[parent] -= 1
        _link(keys, adj, deg, m, x, parent, seen, buf_i, buf_d, queue)
        linked += 1
    return linked


def _connect(keys: np.ndarray, adj: np.ndarray, deg: np.ndarray, entry: int, m: int, device: str = "cpu") -> int:
    """Make every key reachable from entry: each unreachable key, in order, is linked from its nearest reached key
    with a free slot (and back), and what it reaches is marked. keys [N, D] float32; adj [N, cap] / deg [N] are
    edited in place. Returns how many keys were linked.

    The nearest reached keys come in batches of CONNECT_BATCH still-unreached keys, from one exact L2 top-k each (a
    matmul on `device`) over the keys reached before the batch, instead of a scan of every key per linked key."""
    seen = _reached_from(adj, deg, entry)
    linked = 0
    while not seen.all():
        batch = np.flatnonzero(~seen)[:CONNECT_BATCH].astype(np.int32)
        reached = np.flatnonzero(seen)
        local, _ = nearest_keys(keys[reached], keys[batch], CONNECT_CANDIDATES, metric="l2", device=device)
        candidates = np.ascontiguousarray(reached[local], dtype=np.int32)
        linked += _link_unreached(keys, adj, deg, entry, m, batch, candidates, seen)
    return linked


@njit(cache=True, nogil=True)
def _to_csr(adj, deg):
    """Padded adjacency -> (indptr [N+1] int64, indices [E] int32)."""
    n_keys = adj.shape[0]
    indptr = np.zeros(n_keys + 1, dtype=np.int64)
    for x in range(n_keys):
        indptr[x + 1] = indptr[x] + deg[x]
    indices = np.empty(indptr[n_keys], dtype=np.int32)
    for x in range(n_keys):
        indices[indptr[x] : indptr[x + 1]] = adj[x, : deg[x]]
    return indptr, indices



# ----------------------------------------------------------------------------- build (python side)


def exact_topk(keys: torch.Tensor, queries: torch.Tensor, k: int, metric: str = "ip") -> tuple:
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


def nearest_keys(keys: np.ndarray, queries: np.ndarray | None, k: int, metric: str = "ip",
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """exact_topk on `device` from numpy: keys [N, D], queries [n, D] float32 (None: the keys themselves).

    On an accelerator the searches of every graph and layer being built take turns (a lock): they share one device
    with the prefill, which runs their kernels one after another anyway, and so the builds add at most one search's
    memory to the prefill's (engine.sizing.device_knn_bytes) however many graphs build at once.
    """
    if not shares_one_accelerator(device):
        on_keys = torch.from_numpy(keys)
        return exact_topk(on_keys, on_keys if queries is None else torch.from_numpy(queries), k, metric)
    with _ONE_DEVICE_KNN:
        on_keys = torch.from_numpy(keys).to(device)
        on_queries = on_keys if queries is None else torch.from_numpy(queries).to(device)
        found = exact_topk(on_keys, on_queries, k, metric)
        del on_keys, on_queries
        return found


def _choose_entries(knn: np.ndarray, queries: np.ndarray, n_keys: int, n_entries: int) -> np.ndarray:
    """[n_entries] int64 seeds (-1 padded): the key most often in the training queries' top-Nq
    (knn [n, Nq]), then the pivots of training queries (queries [n, D]) picked by farthest-point
    sampling on their directions."""
    entries = [int(np.bincount(knn.ravel(), minlength=n_keys).argmax())]
    unit = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    nearest = np.full(len(unit), np.inf, dtype=np.float32)
    pick = int(np.argmax(knn[:, 0] == entries[0]))
    for _ in range(4 * n_entries):
        if len(entries) >= n_entries:
            break
        nearest = np.minimum(nearest, 1.0 - unit @ unit[pick])
        pick = int(np.argmax(nearest))
        if nearest[pick] <= 0:
            break
        if int(knn[pick, 0]) not in entries:
            entries.append(int(knn[pick, 0]))
    return np.array(entries + [-1] * (n_entries - len(entries)), dtype=np.int64)


def build_head_graph(
    keys: np.ndarray,
    train_queries: np.ndarray,
    params: IndexParams,
    key_knn: tuple[np.ndarray, np.ndarray] | None = None,
    n_entries: int = N_ENTRIES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One head's graph. keys [N, D], train_queries [n, D] float32 (already strided).

    key_knn: optional (ids [N, K] int32, L2 distances [N, K]) exact neighbours of each key among the
    keys (shared by the query heads of one KV head); None skips that merge.
    Returns (indptr [N+1] int64, indices [E] int32, entries [n_entries] int64 -1 padded).
    """
    n_keys = keys.shape[0]
    m = max(1, min(params.degree, n_keys - 1))
    cap = m * OVERFLOW_SLACK
    entries = np.full(n_entries, -1, dtype=np.int64)
    entries[0] = 0
    if n_keys == 1:
        return np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int32), entries
    if len(train_queries):
        knn, _ = nearest_keys(keys, train_queries, params.n_neighbors_per_query, device=params.knn_device)
        entries = _choose_entries(knn, train_queries, n_keys, n_entries)
        adj, deg = _project(keys, knn, m, cap)
    else:
        adj, deg = np.full((n_keys, cap), -1, dtype=np.int32), np.zeros(n_keys, dtype=np.int32)
    if key_knn is not None:
        adj, deg = _merge_knn(keys, adj, deg, key_knn[0], key_knn[1], m)
    _connect(keys, adj, deg, int(entries[0]), m, params.knn_device)
    indptr, indices = _to_csr(adj, deg)
    return indptr, indices, entries


def key_neighbours(keys: np.ndarray, k: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """L2 neighbours of every key among the others. keys [N, D] -> (ids [N, k], dist [N, k]),
    ids -1 padded where N - 1 < k.

    Exact up to EXACT_KEY_KNN_MAX keys on a CPU (faiss's exhaustive search: at SmolLM2's 3.5K keys it made
    the whole build 1.2-1.5x faster than torch's matmul + topk, the same neighbours) and at any size on a GPU (a
    matmul there); beyond that on a CPU the O(N^2) scan dominates the whole build, so an HNSW graph over the keys
    gives them approximately.
    """
    if device == "cpu" and keys.shape[0] > EXACT_KEY_KNN_MAX:
        return _approximate_key_neighbours(keys, k)
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


def _approximate_key_neighbours(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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


_WORKSPACES = threading.local()
WORKSPACES_KEPT = 4  # per thread: a decode step's layers share one (same N, effort, top-k)


def _reused_workspace(shape: tuple, make):
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

    def search(self, queries: np.ndarray, k: int, effort: int | None = None) -> SearchResult:
        """queries [H, m, D] float32 -> ids [H, m, k] int64 best first (-1 padded), scanned [H, m]."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n_heads, m, _ = queries.shape
        if n_heads != self.n_heads:
            raise ValueError(f"expected queries for {self.n_heads} heads, got {n_heads}")
        if self.n_keys == 0 or k <= 0 or m == 0:
            return SearchResult(
                np.full((n_heads, m, max(k, 0)), -1, dtype=np.int64), np.zeros((n_heads, m), dtype=np.int64)
            )
        size = max(effort or self.params.effort, 1)
        arrays = (self.keys, self.kv_of, self.graph_of, self.indptr, self.indices, self.entries)
        degree_room = max(64, 1 << self.max_degree.bit_length())  # layers differ a little in max degree
        if n_heads * m >= PARALLEL_MIN_SEARCHES:  # one workspace per numba thread, kept like the serial one
            works = _reused_workspace((numba.config.NUMBA_NUM_THREADS, self.n_keys, size, k, degree_room),
                                      _thread_workspaces)
            ids, scanned = _search_parallel(queries, *arrays, size, k, works)
        else:
            work = _reused_workspace((self.n_keys, size, k, degree_room), _workspace)
            ids, scanned = _search_serial(queries, *arrays, size, k, work)
        return SearchResult(ids, scanned)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """indptr [G, N+1] int64, indices int32, entries [G, E] int64, graph_of [H] int64 (the graph each query
        head searches); the keys are not included."""
        return {"indptr": self.indptr, "indices": self.indices, "entries": self.entries, "graph_of": self.graph_of}

    def degree_stats(self) -> tuple[float, int]:
        """(mean, max) out-degree over all graphs."""
        deg = np.diff(self.indptr, axis=1)
        return float(deg.mean()) if deg.size else 0.0, int(deg.max()) if deg.size else 0


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
