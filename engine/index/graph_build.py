"""Building one head's attention-aware graph (RoarGraph-style): the numba kernels and their Python driver.

Per graph (the steps of engine.index.graph's docstring): the training queries' exact nearest keys
(engine.index.knn), the projection onto key-to-key edges pruned by the RNG/occlusion rule with L2 between keys,
reverse edges, the merge of each key's own L2 neighbours, `connect` (every key reachable from the entry) and the
entry points. Lists are padded adjacency `adj [N, cap]` int32 with `deg [N]` while building, CSR at the end.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.index.base import IndexParams
from engine.index.knn import nearest_keys
from engine.sizing import GRAPH_OVERFLOW_SLACK

N_ENTRIES = 16  # search seeds per head (see choose_entries)
CONNECT_CANDIDATES = 16  # nearest reached keys kept per unreachable key (the first with a free slot links it)
CONNECT_BATCH = 256  # unreachable keys whose nearest reached keys come from one matmul
# The kernels may reorder float sums (so LLVM vectorises the L2 distances) but must not assume away infinities:
# padded distances are inf.
FINITE_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


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
def add_edge(keys, adj, deg, src, dst, m, buf_i, buf_d):
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
def project(keys, knn, m, cap):
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
            add_edge(keys, adj, deg, fwd[p, t], p, m, buf_i, buf_d)


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
    add_edge(keys, adj, deg, x, parent, m, buf_i, buf_d)
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


def connect(keys: np.ndarray, adj: np.ndarray, deg: np.ndarray, entry: int, m: int, device: str = "cpu") -> int:
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
def to_csr(adj, deg):
    """Padded adjacency -> (indptr [N+1] int64, indices [E] int32)."""
    n_keys = adj.shape[0]
    indptr = np.zeros(n_keys + 1, dtype=np.int64)
    for x in range(n_keys):
        indptr[x + 1] = indptr[x] + deg[x]
    indices = np.empty(indptr[n_keys], dtype=np.int32)
    for x in range(n_keys):
        indices[indptr[x] : indptr[x + 1]] = adj[x, : deg[x]]
    return indptr, indices


def choose_entries(knn: np.ndarray, queries: np.ndarray, n_keys: int, n_entries: int) -> np.ndarray:
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
    cap = m * GRAPH_OVERFLOW_SLACK
    entries = np.full(n_entries, -1, dtype=np.int64)
    entries[0] = 0
    if n_keys == 1:
        return np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int32), entries
    if len(train_queries):
        knn, _ = nearest_keys(keys, train_queries, params.n_neighbors_per_query, device=params.knn_device)
        entries = choose_entries(knn, train_queries, n_keys, n_entries)
        adj, deg = project(keys, knn, m, cap)
    else:
        adj, deg = np.full((n_keys, cap), -1, dtype=np.int32), np.zeros(n_keys, dtype=np.int32)
    if key_knn is not None:
        adj, deg = _merge_knn(keys, adj, deg, key_knn[0], key_knn[1], m)
    connect(keys, adj, deg, int(entries[0]), m, params.knn_device)
    indptr, indices = to_csr(adj, deg)
    return indptr, indices, entries
