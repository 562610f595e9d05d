"""Searching the attention-aware graph (numba kernels).

Best-first search by inner product from the entry points, keeping the best `size` keys scanned (a 4-ary
min-heap) and expanding the best unexpanded one of them (a heap of candidates); the answer is the best k of
*every* key scanned, so k may exceed size. A visited array, no Python per visited node, and prefetching of
the reads the search already knows it will make (they, and the heaps' branches, bound a decode search on a
cold graph, not the arithmetic).

Shapes: keys [N, D] (float32, or float16 as its uint16 bits: numba has no float16), indptr [N+1] absolute
offsets into indices int32, entries [E] int64 (-1 padded, at least one valid).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

CACHE_LINE = 64  # bytes; see _prefetch
HEAP_ARITY = 4  # children per heap node: half the levels of a binary heap, the children in one cache line


def _host_converts_half() -> bool:
    """Whether this CPU converts float16 to float32 in one instruction (x86 F16C; every 64-bit Arm)."""
    import llvmlite.binding as llvm

    return llvm.get_process_triple().startswith(("aarch64", "arm64")) or bool(llvm.get_host_cpu_features().get("f16c"))


NATIVE_HALF = _host_converts_half()


def _half_by_bits(builder: ir.IRBuilder, bits16: ir.Value) -> ir.Value:
    """float16 bits (i16) -> float32 with integer operations: the half's exponent and mantissa, shifted into a
    float32's, give the value times 2^-112 (normals and subnormals alike), the sign moves to bit 31, and one
    multiply restores the scale. Exact for every finite half."""
    i32 = ir.IntType(32)
    h = builder.zext(bits16, i32)
    magnitude = builder.shl(builder.and_(h, ir.Constant(i32, 0x7FFF)), ir.Constant(i32, 13))
    sign = builder.shl(builder.and_(h, ir.Constant(i32, 0x8000)), ir.Constant(i32, 16))
    value = builder.bitcast(builder.or_(magnitude, sign), ir.FloatType())
    return builder.fmul(value, ir.Constant(ir.FloatType(), 2.0**112))


def _half_conversion(native: bool):
    """An intrinsic: a float16 given as its uint16 bits -> float32 (numba has no float16). native: the CPU's
    conversion instruction (LLVM's fpext, vectorised to vcvtph2ps), 1.4-1.6 x faster per key; else the
    integer route (_half_by_bits)."""
    @intrinsic
    def half_to_f32(typingctx, bits):
        def codegen(context, builder, signature, args):
            if native:
                return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
            return _half_by_bits(builder, args[0])
        return types.float32(types.uint16), codegen
    return half_to_f32


_half_to_f32 = _half_conversion(NATIVE_HALF)  # what the search and the retrieved attention use
_half_to_f32_by_bits = _half_conversion(False)  # what a CPU without NATIVE_HALF runs (tested everywhere)


def _key_dot(q: np.ndarray, key: np.ndarray) -> float:
    """q · key for a float32 key, or for a float16 key stored as its uint16 bits (numba has no float16)."""
    raise NotImplementedError("numba only (see the overload below)")


@overload(_key_dot, jit_options={"fastmath": True, "nogil": True})
def _key_dot_impl(q, key):
    if key.dtype == types.uint16:
        def dot_half(q, key):
            s = np.float32(0.0)
            for i in range(q.shape[0]):
                s += q[i] * _half_to_f32(key[i])
            return s
        return dot_half

    def dot_float(q, key):
        s = np.float32(0.0)
        for i in range(q.shape[0]):
            s += q[i] * key[i]
        return s
    return dot_float


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
def _heap_push(heap_s, heap_i, n, cap, s, v):
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
def _heap_pop(heap_s, heap_i, n):
    """Drop the root (the smallest) of a min-heap of n > 0 entries; returns the new n."""
    n -= 1
    if n > 0:
        _sift_down(heap_s, heap_i, n, heap_s[n], heap_i[n])
    return n


@intrinsic
def _prefetch(typingctx, arr, i):
    """Hint the CPU to fetch arr[i] (1-D) or every cache line of row arr[i] (2-D) into its caches; no effect
    on results. The search knows a node's neighbours and the next node to expand before it needs their
    keys and lists, and these random reads are what it waits on."""
    def codegen(context, builder, signature, args):
        arr_type, index_type = signature.args
        array = context.make_array(arr_type)(context, builder, args[0])
        index = context.cast(builder, args[1], index_type, types.intp)
        zero = ir.Constant(ir.IntType(64), 0)
        pointer = cgutils.get_item_pointer(context, builder, arr_type, array, [index] + [zero] * (arr_type.ndim - 1))
        byte_pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer.type, i32, i32, i32]), "llvm.prefetch.p0"
        )
        read, keep_in_all_levels, data = ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)
        i64 = ir.IntType(64)
        n_bytes = ir.Constant(i64, arr_type.dtype.bitwidth // 8)
        if arr_type.ndim == 2:  # the whole row
            n_bytes = builder.mul(cgutils.unpack_tuple(builder, array.shape, 2)[1], n_bytes)
        with cgutils.for_range_slice(builder, zero, n_bytes, ir.Constant(i64, CACHE_LINE)) as (offset, _):
            builder.call(prefetch, [builder.gep(byte_pointer, [offset]), read, keep_in_all_levels, data])
        return context.get_dummy_value()
    return types.void(arr, i), codegen


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
        _prefetch(keys, fresh[j])
    return n_fresh


@njit(cache=True, nogil=True)
def _workspace(n_keys, size, k, max_degree):
    """Scratch for _search_one, reused across searches over n_keys keys: visited [N] bool (all False between
    searches), the candidate heap [N] (negated scores, ids: a min-heap with the best candidate at 0), the result
    min-heap [size], the answer min-heap [k] and one node's unvisited neighbours [max_degree + 1]."""
    return (
        np.zeros(n_keys, dtype=np.bool_),
        np.empty(n_keys, dtype=np.float32),
        np.empty(n_keys, dtype=np.int32),
        np.empty(size, dtype=np.float32),
        np.empty(size, dtype=np.int32),
        np.empty(k, dtype=np.float32),
        np.empty(k, dtype=np.int32),
        np.empty(max_degree + 1, dtype=np.int32),
    )


@njit(cache=True, nogil=True, fastmath=True)
def _search_one(q, keys, indptr, indices, entries, size, k, out_ids, work):
    """Best-first search by inner product over one head's CSR graph; returns the q·k count.

    q [D], keys [N, D], indptr [N+1] (absolute offsets into indices), entries [E] int64 (-1 padded, at least one
    valid) seed the search; work from _workspace. The result list holds the best `size` keys scanned; the next
    node to expand is the best unexpanded one among them, and the search ends when none is left (HNSW's
    termination: the best candidate is worse than the size-th best result). The answer is the best k of every
    key scanned (so k may exceed size). out_ids [k] int64 is filled best first, -1 padded.
    """
    visited, cand_s, cand_i, res_s, res_i, ans_s, ans_i, fresh = work
    n_keys = keys.shape[0]  # the candidate heap's capacity, never reached
    separate_answer = k > size
    n_cand = 0
    n_res = 0
    n_ans = 0
    scanned = 0
    for t in range(entries.shape[0]):
        v = entries[t]
        if v < 0 or visited[v]:
            continue
        visited[v] = True
        s = _key_dot(q, keys[v])
        scanned += 1
        if separate_answer:
            n_ans = _heap_push(ans_s, ans_i, n_ans, k, s, v)
        if n_res < size or s > res_s[0]:
            n_res = _heap_push(res_s, res_i, n_res, size, s, v)
            n_cand = _heap_push(cand_s, cand_i, n_cand, n_keys, -s, v)
            _prefetch(indptr, v)
    while n_cand > 0 and not (n_res == size and -cand_s[0] < res_s[0]):
        node = cand_i[0]
        n_cand = _heap_pop(cand_s, cand_i, n_cand)
        if n_cand > 0:
            _prefetch(indices, indptr[cand_i[0]])  # the likely next node's list
        n_fresh = _unvisited_neighbours(node, indptr, indices, visited, fresh, keys)
        # The same scoring as for the entry points above, written out: an inline helper taking the workspace
        # made this loop 10-30% slower under numba (measured at 128K keys).
        for j in range(n_fresh):
            v = fresh[j]
            s = _key_dot(q, keys[v])
            if separate_answer:
                n_ans = _heap_push(ans_s, ans_i, n_ans, k, s, v)
            if n_res < size or s > res_s[0]:
                n_res = _heap_push(res_s, res_i, n_res, size, s, v)
                n_cand = _heap_push(cand_s, cand_i, n_cand, n_keys, -s, v)
                _prefetch(indptr, v)
        scanned += n_fresh
    if separate_answer:
        best_s, best_i, n_best = ans_s, ans_i, n_ans
    else:
        best_s, best_i, n_best = res_s, res_i, n_res
    order = np.argsort(-best_s[:n_best])
    for t in range(k):
        out_ids[t] = best_i[order[t]] if t < n_best else -1
    visited[:] = False
    return scanned


@njit(cache=True, nogil=True)
def _thread_workspaces(n_threads, n_keys, size, k, max_degree):
    """_workspace's arrays stacked for n_threads numba threads (each thread's row is its own workspace)."""
    return (
        np.zeros((n_threads, n_keys), dtype=np.bool_),
        np.empty((n_threads, n_keys), dtype=np.float32),
        np.empty((n_threads, n_keys), dtype=np.int32),
        np.empty((n_threads, size), dtype=np.float32),
        np.empty((n_threads, size), dtype=np.int32),
        np.empty((n_threads, k), dtype=np.float32),
        np.empty((n_threads, k), dtype=np.int32),
        np.empty((n_threads, max_degree + 1), dtype=np.int32),
    )


@njit(cache=True, nogil=True, parallel=True)
def _search_parallel(queries, keys, kv_of, graph_of, indptr, indices, entries, size, k, works):
    """queries [H, m, D], keys [H_kv, N, D], kv_of [H], graph_of [H] (the graph each query head searches),
    indptr [G, N+1], entries [G, E], works from _thread_workspaces (one row per numba thread, reusable across
    calls) -> ids [H, m, k] int64, scanned [H, m] int64; one numba task per (head, query)."""
    n_heads, m, _ = queries.shape
    ids = np.empty((n_heads, m, k), dtype=np.int64)
    scanned = np.zeros((n_heads, m), dtype=np.int64)
    visited, cand_s, cand_i, res_s, res_i, ans_s, ans_i, fresh = works
    for job in prange(n_heads * m):
        h = job // m
        i = job % m
        t = numba.get_thread_id()
        work = (visited[t], cand_s[t], cand_i[t], res_s[t], res_i[t], ans_s[t], ans_i[t], fresh[t])
        g = graph_of[h]
        scanned[h, i] = _search_one(
            queries[h, i], keys[kv_of[h]], indptr[g], indices, entries[g], size, k, ids[h, i], work
        )
    return ids, scanned


@njit(cache=True, nogil=True)
def _search_serial(queries, keys, kv_of, graph_of, indptr, indices, entries, size, k, work):
    """As _search_parallel, on the calling thread with the given workspace (from _workspace(N, size, k,
    max_degree), reusable across calls: no thread-pool wake-up and no fresh pages, best for decode)."""
    n_heads, m, _ = queries.shape
    ids = np.empty((n_heads, m, k), dtype=np.int64)
    scanned = np.zeros((n_heads, m), dtype=np.int64)
    for h in range(n_heads):
        g = graph_of[h]
        for i in range(m):
            scanned[h, i] = _search_one(
                queries[h, i], keys[kv_of[h]], indptr[g], indices, entries[g], size, k, ids[h, i], work
            )
    return ids, scanned
