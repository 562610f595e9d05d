"""Searching the attention-aware graph (numba kernels).

Best-first search by inner product from the entry points, keeping the best `size` keys scanned (a 4-ary
min-heap) and expanding the best unexpanded one of them (a heap of candidates); the answer is the best k (k <= size)
of every key scanned. A visited array, no Python per visited node, and prefetching of the reads the search already
knows it will make (they, and the heaps' branches, bound a decode search on a cold graph, not the arithmetic). A
head whose budget is a large share of the keys scores every key instead (`scan_one`).

Shapes: keys [N, D] (float32, or float16 as its uint16 bits: numba has no float16), indptr [N+1] absolute
offsets into indices int32, entries [E] int64 (-1 padded, at least one valid). The key dot products, prefetching
and the workspaces come from engine.index.kernels.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from engine.index.kernels import key_dot, prefetch

HEAP_ARITY = 4  # children per heap node: half the levels of a binary heap, the children in one cache line


@njit(cache=True, nogil=True, inline="always")
def _sift_down(heap_s, heap_i, n, s, v):
    """Place (s, v) at the root of a HEAP_ARITY-ary min-heap of n entries whose root slot is free, sifting it
    down."""
    pos = 0
    while True:
        first = HEAP_ARITY * pos + 1
        if first >= n:
            break
        child = first
        child_s = heap_s[first]
        for c in range(first + 1, min(first + HEAP_ARITY, n)):
            if heap_s[c] < child_s:
                child = c
                child_s = heap_s[c]
        if child_s >= s:
            break
        heap_s[pos] = child_s
        heap_i[pos] = heap_i[child]
        pos = child
    heap_s[pos] = s
    heap_i[pos] = v


@njit(cache=True, nogil=True, inline="always")
def heap_push(heap_s, heap_i, n, cap, s, v):
    """Keep the best `cap` (score, id) in a HEAP_ARITY-ary min-heap of n entries (the worst kept at 0); returns
    the new n."""
    if n == cap:
        if s > heap_s[0]:
            _sift_down(heap_s, heap_i, n, s, v)  # replaces the root
        return n
    pos = n  # append and sift up
    while pos > 0:
        parent = (pos - 1) // HEAP_ARITY
        if heap_s[parent] <= s:
            break
        heap_s[pos] = heap_s[parent]
        heap_i[pos] = heap_i[parent]
        pos = parent
    heap_s[pos] = s
    heap_i[pos] = v
    return n + 1


@njit(cache=True, nogil=True, inline="always")
def heap_pop(heap_s, heap_i, n):
    """Drop the root (the smallest) of a min-heap of n > 0 entries; returns the new n."""
    n -= 1
    if n > 0:
        _sift_down(heap_s, heap_i, n, heap_s[n], heap_i[n])
    return n


@njit(cache=True, nogil=True, inline="always")
def _unvisited_neighbours(node, indptr, indices, visited, fresh, keys):
    """Mark node's neighbours visited, collect the ones that were not into fresh [max_degree + 1] (written
    unconditionally, kept by advancing the count: no branch to mispredict) and prefetch their keys; returns
    how many."""
    n_fresh = 0
    for e in range(indptr[node], indptr[node + 1]):
        v = indices[e]
        fresh[n_fresh] = v
        n_fresh += 1 - np.int64(visited[v])
        visited[v] = True
    for j in range(n_fresh):
        prefetch(keys, fresh[j])
    return n_fresh


@njit(cache=True, nogil=True, fastmath=True)
def _search_one(q, keys, indptr, indices, entries, size, k, out_ids, work):
    """Best-first search by inner product over one head's CSR graph; returns the q·k count.

    q [D], keys [N, D], indptr [N+1] (absolute offsets into indices), entries [E] int64 (-1 padded, at least one
    valid) seed the search; work from engine.index.kernels.search_workspace. The result list holds the best `size`
    keys scanned; the next node to expand is the best unexpanded one among them, and the search ends when none is
    left (HNSW's termination: the best candidate is worse than the size-th best result). The answer is the best k
    (k <= size) of every key scanned, which are the best k of the result list. out_ids [k] int64 is filled best
    first, -1 padded.
    """
    visited, cand_s, cand_i, res_s, res_i, fresh = work
    n_keys = keys.shape[0]  # the candidate heap's capacity, never reached
    n_cand = 0
    n_res = 0
    scanned = 0
    for t in range(entries.shape[0]):
        v = entries[t]
        if v < 0 or visited[v]:
            continue
        visited[v] = True
        s = key_dot(q, keys[v])
        scanned += 1
        if n_res < size or s > res_s[0]:
            n_res = heap_push(res_s, res_i, n_res, size, s, v)
            n_cand = heap_push(cand_s, cand_i, n_cand, n_keys, -s, v)
            prefetch(indptr, v)
    while n_cand > 0 and not (n_res == size and -cand_s[0] < res_s[0]):
        node = cand_i[0]
        n_cand = heap_pop(cand_s, cand_i, n_cand)
        if n_cand > 0:
            prefetch(indices, indptr[cand_i[0]])  # the likely next node's list
        n_fresh = _unvisited_neighbours(node, indptr, indices, visited, fresh, keys)
        # The same scoring as for the entry points above, written out: an inline helper taking the workspace
        # made this loop slower under numba (docs/benchmarks.md).
        for j in range(n_fresh):
            v = fresh[j]
            s = key_dot(q, keys[v])
            if n_res < size or s > res_s[0]:
                n_res = heap_push(res_s, res_i, n_res, size, s, v)
                n_cand = heap_push(cand_s, cand_i, n_cand, n_keys, -s, v)
                prefetch(indptr, v)
        scanned += n_fresh
    order = np.argsort(-res_s[:n_res])
    for t in range(k):
        out_ids[t] = res_i[order[t]] if t < n_res else -1
    visited[:] = False
    return scanned


@njit(cache=True, nogil=True, fastmath=True)
def scan_one(q, keys, k, out_ids, work):
    """Every key scored, the best k kept: for a head whose budget is a large share of the keys (see GraphIndex.search).
    q [D], keys [N, D]; fills out_ids [k] best first (-1 padded past N); returns N. The k-th best score is found by
    partition (O(N)), and only the k keys above it are sorted."""
    scores = work[1]  # the candidate heap's scores: N floats, free between searches
    n_keys = keys.shape[0]
    for v in range(n_keys):
        scores[v] = key_dot(q, keys[v])
    kept = min(k, n_keys)
    threshold = np.partition(scores[:n_keys], n_keys - kept)[n_keys - kept]
    ties = kept  # how many keys scoring exactly the threshold to keep: kept less those above it
    for v in range(n_keys):
        ties -= np.int64(scores[v] > threshold)
    chosen = work[2]  # the candidate heap's ids: N slots, free between searches
    t = 0
    for v in range(n_keys):
        s = scores[v]
        if s > threshold or (s == threshold and ties > 0):
            ties -= np.int64(s == threshold)
            chosen[t] = v
            t += 1
    best = chosen[:kept]
    order = np.argsort(-scores[best])
    for t in range(k):
        out_ids[t] = best[order[t]] if t < kept else -1
    return n_keys


@njit(cache=True, nogil=True, inline="always")
def _search_or_scan(q, keys, indptr, indices, entries, size, k, scan, out_ids, work):
    if scan:
        return scan_one(q, keys, k, out_ids, work)
    return _search_one(q, keys, indptr, indices, entries, size, k, out_ids, work)


@njit(cache=True, nogil=True, parallel=True)
def search_parallel(queries, keys, kv_of, graph_of, indptr, indices, entries, sizes, ks, scan, works):
    """queries [H, m, D], keys [H_kv, N, D], kv_of [H], graph_of [H] (the graph each query head searches),
    indptr [G, N+1], entries [G, E], per query head sizes [H] (queue), ks [H] (keys wanted, each at most its size) and
    scan [H] (score every key instead of searching), works from engine.index.kernels.thread_search_workspaces (one
    row per numba thread, reusable across calls, holding at least max(sizes)) -> ids [H, m, max(ks)] int64 (-1 past
    a head's k), scanned [H, m] int64; one numba task per (head, query)."""
    n_heads, m, _ = queries.shape
    ids = np.full((n_heads, m, ks.max()), -1, dtype=np.int64)
    scanned = np.zeros((n_heads, m), dtype=np.int64)
    visited, cand_s, cand_i, res_s, res_i, fresh = works
    for job in prange(n_heads * m):
        h = job // m
        i = job % m
        t = numba.get_thread_id()
        work = (visited[t], cand_s[t], cand_i[t], res_s[t], res_i[t], fresh[t])
        g = graph_of[h]
        scanned[h, i] = _search_or_scan(queries[h, i], keys[kv_of[h]], indptr[g], indices, entries[g], sizes[h],
                                        ks[h], scan[h], ids[h, i, : ks[h]], work)
    return ids, scanned


@njit(cache=True, nogil=True)
def search_serial(queries, keys, kv_of, graph_of, indptr, indices, entries, sizes, ks, scan, work):
    """As search_parallel, on the calling thread with the given workspace (from search_workspace(N, max(sizes),
    max_degree), reusable across calls: no thread-pool wake-up and no fresh pages, best for decode)."""
    n_heads, m, _ = queries.shape
    ids = np.full((n_heads, m, ks.max()), -1, dtype=np.int64)
    scanned = np.zeros((n_heads, m), dtype=np.int64)
    for h in range(n_heads):
        g = graph_of[h]
        for i in range(m):
            scanned[h, i] = _search_or_scan(queries[h, i], keys[kv_of[h]], indptr[g], indices, entries[g], sizes[h],
                                            ks[h], scan[h], ids[h, i, : ks[h]], work)
    return ids, scanned
