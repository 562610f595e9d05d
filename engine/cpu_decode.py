"""The whole decode step's attention on the CPU, in one compiled pass (numba).

`engine.attention.retrieved_attention` gathers the retrieved K/V rows into new tensors and runs a handful of
torch ops over them, mostly per-op overhead and copies for one decode query per head. The kernel here reads each
retrieved row in place (float16 rows as their bits, like the graph search) and computes the same (o, lse,
weights) in one pass; `retrieved_attention` stays the reference it is tested against.

`decode_attention_cpu` does the whole step where the static set is in CPU memory too (no GPU): the static
part, the retrieved part and their merge in one pass; `retrieved_attention_cpu` is the same kernel with an
empty static set, for a GPU host whose static part stays on the device. What it saves per step is measured by
the decode suite (docs/benchmarks.md)."""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, types
from numba.extending import overload

from engine.index.kernels import half_to_f32, key_dot, prefetch


def _add_scaled(out: np.ndarray, weight: float, row: np.ndarray) -> None:
    """out += weight * row for a float32 row, or a float16 row stored as its uint16 bits (numba only)."""
    raise NotImplementedError("numba only (see the overload below)")


@overload(_add_scaled, jit_options={"fastmath": True, "nogil": True})
def _add_scaled_impl(out, weight, row):
    if row.dtype == types.uint16:
        def add_half(out, weight, row):
            for i in range(out.shape[0]):
                out[i] += weight * half_to_f32(row[i])
        return add_half

    def add_float(out, weight, row):
        for i in range(out.shape[0]):
            out[i] += weight * row[i]
    return add_float


SUPPORTED_KV_DTYPES = (torch.float32, torch.float16)


def _as_kernel_array(x: torch.Tensor) -> np.ndarray:
    """A CPU float32 tensor as numpy, or a float16 one as its uint16 bits, in place (never a copy of the keys)."""
    array = x.detach().numpy()
    return array.view(np.uint16) if array.dtype == np.float16 else array


def retrieved_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ids: torch.Tensor, scale: float
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`engine.attention.retrieved_attention(..., return_weights=True)` for CPU tensors, compiled: the decode
    step's kernel with an empty static set (what a GPU host runs on the CPU; its static part stays on the device).

    Args:
        q: [H, 1, D] one query per head.
        k, v: [H_kv, N, D] CPU tensors of a SUPPORTED_KV_DTYPES dtype (read in place).
        ids: [H, 1, top_k] int64 positions in 0..N-1, -1 for none.
        scale: the softmax scale.
    Returns:
        o [H, 1, D], lse [H, 1] over the retrieved keys only, weights [H, 1, top_k] (0 for padding), float32.
    """
    no_static = k.new_empty((k.shape[0], 0, k.shape[-1]))
    o, _, lse, weights = decode_attention_cpu(q, no_static, no_static, k, v, ids, scale)
    return o, lse, weights


@njit(cache=True, nogil=True, fastmath=True)
def decode_attention_kernel(q, static_k, static_v, keys, values, ids, scale, out, lse, lse_off, weights, scratch):
    """One decode query per head: exact attention over the static set and over the retrieved rows, merged.

    q [H, D] float32; static_k/static_v [H_kv, S, D] and keys/values [H_kv, N, D] (float32, or uint16 bits of
    float16); ids [H, k] int64 (-1 = none) -> fills out [H, D], lse [H] (over both sets), lse_off [H] and
    weights [H, k] (softmax over the retrieved keys alone). scratch [H // H_kv, S] float32.

    Both parts are kept unnormalised (sum of e^(s - max) v, and the sum of e^(s - max)) and merged once:
    o = (a U_static + b U_off) / (a T_static + b T_off) with a, b = e^(max_part - max_both).
    """
    n_heads, dim = q.shape
    n_kv, n_static = static_k.shape[0], static_k.shape[1]
    group = n_heads // n_kv
    acc = np.empty(dim, dtype=np.float32)
    static_max = np.empty(group, dtype=np.float32)
    static_total = np.empty(group, dtype=np.float32)
    for kv in range(n_kv):
        first = kv * group
        for h in range(first, first + group):  # the retrieved rows are random reads: ask for them early
            for t in range(ids.shape[1]):
                if ids[h, t] >= 0:
                    prefetch(keys[kv], ids[h, t])
        # static set: each key and value row read once for the whole group
        for j in range(n_static):
            for g in range(group):
                scratch[g, j] = key_dot(q[first + g], static_k[kv, j]) * scale
        for g in range(group):
            best = np.float32(-np.inf)
            for j in range(n_static):
                best = max(best, scratch[g, j])
            total = np.float32(0.0)
            for j in range(n_static):
                scratch[g, j] = np.exp(scratch[g, j] - best)
                total += scratch[g, j]
            static_max[g], static_total[g] = best, total
            acc[:] = 0.0  # one head at a time: a local accumulator the compiler keeps apart from the rows
            for j in range(n_static):
                _add_scaled(acc, scratch[g, j], static_v[kv, j])
            out[first + g] = acc
        # retrieved rows, one head at a time, then the merge
        for g in range(group):
            h = first + g
            row_ids = ids[h]
            best = np.float32(-np.inf)
            for t in range(row_ids.shape[0]):
                v = row_ids[t]
                if v >= 0:
                    prefetch(values[kv], v)
                    weights[h, t] = key_dot(q[h], keys[kv, v]) * scale
                    best = max(best, weights[h, t])
            total = np.float32(0.0)
            acc[:] = 0.0
            for t in range(row_ids.shape[0]):
                v = row_ids[t]
                if v >= 0:
                    weights[h, t] = np.exp(weights[h, t] - best)
                    total += weights[h, t]
                    _add_scaled(acc, weights[h, t], values[kv, v])
                else:
                    weights[h, t] = 0.0
            for t in range(row_ids.shape[0]):
                weights[h, t] = weights[h, t] / total if total > 0 else np.float32(0.0)
            lse_off[h] = best + np.log(total) if total > 0 else -np.inf
            # which parts hold keys is decided by their totals: fastmath may not compare with infinities
            if static_total[g] == 0 and total == 0:  # neither set has a key: o 0, lse -inf
                out[h] = 0.0
                lse[h] = -np.inf
                continue
            if total == 0:
                both, a, b = static_max[g], np.float32(1.0), np.float32(0.0)
            elif static_total[g] == 0:
                both, a, b = best, np.float32(0.0), np.float32(1.0)
            else:
                both = max(static_max[g], best)
                a, b = np.exp(static_max[g] - both), np.exp(best - both)
            denominator = a * static_total[g] + b * total
            for i in range(dim):
                out[h, i] = (a * out[h, i] + b * acc[i]) / denominator
            lse[h] = both + np.log(denominator)


def decode_attention_cpu(q: torch.Tensor, static_k: torch.Tensor, static_v: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, ids: torch.Tensor, scale: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A whole decode step's attention on the CPU in one compiled pass: the static set, the retrieved rows of the
    offloaded set, and their log-sum-exp merge (`partial_attention` + `retrieved_attention_cpu` +
    `merge_attention_states`, which it is tested against). One pass instead of a dozen small torch ops matters
    because a decode step meets these arrays cold, after the other layers' work.

    Args:
        q: [H, 1, D] one query per head.
        static_k, static_v: [H_kv, S, D] CPU tensors (rows contiguous), the static set including q's own token.
        k, v: [H_kv, N, D] the offloaded set; ids [H, 1, top_k] int64 into it, -1 for none.
        scale: the softmax scale.
        (All K/V of a SUPPORTED_KV_DTYPES dtype, read in place.)
    Returns:
        o [H, 1, D] and lse [H, 1] over both sets; lse_off [H, 1] and weights [H, 1, top_k] over the retrieved
        keys alone (for tracing which keys were attended). float32.
    """
    for x in (static_k, static_v, k, v):
        if x.dtype not in SUPPORTED_KV_DTYPES:
            raise TypeError(f"compiled decode attention reads float32 or float16 K/V, not {x.dtype}")
    n_heads, m, dim = q.shape
    if m != 1:
        raise ValueError(f"compiled decode attention takes one query per head, got {m}")
    out = np.empty((n_heads, dim), dtype=np.float32)
    lse = np.empty(n_heads, dtype=np.float32)
    lse_off = np.empty(n_heads, dtype=np.float32)
    weights = np.empty((n_heads, ids.shape[-1]), dtype=np.float32)
    scratch = np.empty((n_heads // static_k.shape[0], static_k.shape[1]), dtype=np.float32)
    decode_attention_kernel(
        q.detach().float().numpy().reshape(n_heads, dim), _as_kernel_array(static_k), _as_kernel_array(static_v),
        _as_kernel_array(k), _as_kernel_array(v), ids.numpy().reshape(n_heads, -1), np.float32(scale),
        out, lse, lse_off, weights, scratch,
    )
    return (torch.from_numpy(out).unsqueeze(1), torch.from_numpy(lse).unsqueeze(1),
            torch.from_numpy(lse_off).unsqueeze(1), torch.from_numpy(weights).unsqueeze(1))
