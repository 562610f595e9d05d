"""numba primitives shared by the graph search (engine.index.graph_search) and the CPU decode step
(engine.cpu_decode): float16 decode, key dot products, prefetching and the search's workspace.

Keys are float32, or float16 stored as their uint16 bits (numba has no float16): `half_to_f32` decodes one such
value, `key_dot` takes either kind of key row.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

CACHE_LINE = 64  # bytes; see prefetch


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
    conversion instruction (LLVM's fpext, vectorised to vcvtph2ps), faster per key (docs/benchmarks.md); else the
    integer route (_half_by_bits)."""

    @intrinsic
    def half_to_f32(typingctx, bits):
        def codegen(context, builder, signature, args):
            if native:
                return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
            return _half_by_bits(builder, args[0])

        return types.float32(types.uint16), codegen

    return half_to_f32


half_to_f32 = _half_conversion(NATIVE_HALF)  # what the search and the CPU decode step use
half_to_f32_by_bits = _half_conversion(False)  # what a CPU without NATIVE_HALF runs (tested everywhere)


def key_dot(q: np.ndarray, key: np.ndarray) -> float:
    """q · key for q [D] float32 and a key [D] float32, or float16 stored as its uint16 bits (numba only)."""
    raise NotImplementedError("numba only (see the overload below)")


@overload(key_dot, jit_options={"fastmath": True, "nogil": True})
def _key_dot_impl(q, key):
    if key.dtype == types.uint16:

        def dot_half(q, key):
            s = np.float32(0.0)
            for i in range(q.shape[0]):
                s += q[i] * half_to_f32(key[i])
            return s

        return dot_half

    def dot_float(q, key):
        s = np.float32(0.0)
        for i in range(q.shape[0]):
            s += q[i] * key[i]
        return s

    return dot_float


@intrinsic
def prefetch(typingctx, arr, i):
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


@njit(cache=True, nogil=True)
def search_workspace(n_keys, size, max_degree):
    """Scratch for one graph search (engine.index.graph_search), reused across searches over n_keys keys: visited
    [N] bool (all False between searches), the candidate heap [N] (negated scores, ids: a min-heap with the best
    candidate at 0), the result min-heap [size] and one node's unvisited neighbours [max_degree + 1]."""
    return (
        np.zeros(n_keys, dtype=np.bool_),
        np.empty(n_keys, dtype=np.float32),
        np.empty(n_keys, dtype=np.int32),
        np.empty(size, dtype=np.float32),
        np.empty(size, dtype=np.int32),
        np.empty(max_degree + 1, dtype=np.int32),
    )


@njit(cache=True, nogil=True)
def thread_search_workspaces(n_threads, n_keys, size, max_degree):
    """search_workspace's arrays stacked for n_threads numba threads (each thread's row is its own workspace)."""
    return (
        np.zeros((n_threads, n_keys), dtype=np.bool_),
        np.empty((n_threads, n_keys), dtype=np.float32),
        np.empty((n_threads, n_keys), dtype=np.int32),
        np.empty((n_threads, size), dtype=np.float32),
        np.empty((n_threads, size), dtype=np.int32),
        np.empty((n_threads, max_degree + 1), dtype=np.int32),
    )
