"""Searching the graph whose neighbour lists carry int8-coded keys (numba kernels; the index: engine.index.qgraph).

The search is engine.index.graph_search's best-first search, step for step, with one change where a node is expanded:
each unvisited neighbour's q·k is first estimated from its int8 code, read from the node's contiguous block of codes
(codes [E, D] int8, row e belonging to edge e of the CSR `indices`), and the exact q·k (a random read of the key) is
computed only where the estimate, widened by `margin`, could still beat the result list's worst score. A neighbour
rejected on its estimate is marked visited like one scored exactly: every list codes a key alike (one set of scales
per graph) and the threshold only rises, so it would be rejected again.

With margin = the estimate's error bound (sum_d |q_d| scale_d / 2, what engine.index.qgraph passes at slack 1)
every key the exact search would keep is scored exactly, and each rejected one would have been rejected by the exact
search too, so the search takes the same steps and returns the same ids as the exact graph's search, with fewer exact
q·k. A smaller margin trades recall for fewer exact q·k.

Shapes: q [D] float32, q_scaled [D] = q * scales of the graph, keys [N, D] (float32 or float16 bits), indptr [N+1]
absolute, indices [E] int32, codes [E, D] int8, entries [E'] int64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.index.graph_search import heap_pop, heap_push, scan_one
from engine.index.kernels import key_dot, prefetch


@njit(cache=True, nogil=True, inline="always")
def _code_dot(q_scaled, code):
    """The estimate sum_d q_scaled[d] * code[d] of q·k for one int8-coded key."""
    s = np.float32(0.0)
    for d in range(q_scaled.shape[0]):
        s += q_scaled[d] * np.float32(code[d])
    return s


@njit(cache=True, nogil=True, fastmath=True)
def search_one_coded(q, q_scaled, margin, keys, indptr, indices, codes, entries, size, k, out_ids, work):
    """Best-first search by inner product with estimate-filtered scoring; returns (exact q·k, estimates).

    work: engine.index.kernels.search_workspace's arrays. size: the queue (at least k, as
    engine.index.graph.queue_sizes makes it). out_ids [k] int64 best first, -1 padded.
    """
    visited, cand_s, cand_i, res_s, res_i, fresh = work
    n_keys = keys.shape[0]
    n_cand = 0
    n_res = 0
    scanned = 0
    estimated = 0
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
            nxt = indptr[cand_i[0]]
            prefetch(indices, nxt)
            prefetch(codes, nxt)  # the first code row of the likely next node's block
        # Who may still enter the results: every neighbour while the list fills, else those whose estimate can beat
        # the worst kept score (the threshold at the start of this expansion: only lower than the exact search's).
        threshold = res_s[0] if n_res == size else -np.inf
        n_fresh = 0
        for e in range(indptr[node], indptr[node + 1]):
            v = indices[e]
            if visited[v]:
                continue
            visited[v] = True
            if threshold > -np.inf:
                estimated += 1
                if _code_dot(q_scaled, codes[e]) + margin <= threshold:
                    continue  # cannot enter, now or later (the threshold only rises; every list codes v alike)
            fresh[n_fresh] = v
            n_fresh += 1
        for j in range(n_fresh):
            prefetch(keys, fresh[j])
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
    return scanned, estimated


@njit(cache=True, nogil=True)
def search_coded_serial(queries, scaled, margins, keys, kv_of, graph_of, indptr, indices, codes, entries, sizes, ks,
                        scan, work, heads):
    """The searches of query heads `heads` [h] int64 for queries [H, m, D] (scaled [H, m, D]: each query times its
    graph's scales; margins [H, m]; per query head sizes [H] (queue), ks [H] and scan [H], as
    engine.index.graph_search.search_serial takes them) on the calling thread -> ids [h, m, max ks[heads]] int64 (-1
    past a head's k), scanned [h, m], estimated [h, m]. A scanning head scores every key exactly (scan_one)."""
    m = queries.shape[1]
    width = 0
    for j in range(heads.shape[0]):
        width = max(width, ks[heads[j]])
    ids = np.full((heads.shape[0], m, width), -1, dtype=np.int64)
    scanned = np.zeros((heads.shape[0], m), dtype=np.int64)
    estimated = np.zeros((heads.shape[0], m), dtype=np.int64)
    for j in range(heads.shape[0]):
        h = heads[j]
        g = graph_of[h]
        for i in range(m):
            out = ids[j, i, : ks[h]]
            if scan[h]:
                scanned[j, i] = scan_one(queries[h, i], keys[kv_of[h]], ks[h], out, work)
            else:
                scanned[j, i], estimated[j, i] = search_one_coded(
                    queries[h, i], scaled[h, i], margins[h, i], keys[kv_of[h]], indptr[g], indices, codes,
                    entries[g], sizes[h], ks[h], out, work)
    return ids, scanned, estimated
