"""Attention over the retrieved keys on the CPU, in one compiled pass (numba).

`engine.attention.retrieved_attention` gathers the retrieved K/V rows into new tensors and runs a handful of
torch ops over them; for one decode query per head (top-100 of 9 heads) that is about 0.2 ms, mostly
per-op overhead and copies. This kernel reads each retrieved row in place (float16 rows as their bits, like
the graph search) and computes the same (o, lse, weights) in one pass: it is what decoding uses when the
offloaded set is in CPU memory. `retrieved_attention` stays the reference it is tested against.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, types
from numba.extending import overload

from engine.index.graph_search import _half_to_f32, _key_dot


def _add_scaled(out: np.ndarray, weight: float, row: np.ndarray) -> None:
    """out += weight * row for a float32 row, or a float16 row stored as its uint16 bits (numba only)."""
    raise NotImplementedError("numba only (see the overload below)")


@overload(_add_scaled, jit_options={"fastmath": True, "nogil": True})
def _add_scaled_impl(out, weight, row):
    if row.dtype == types.uint16:
        def add_half(out, weight, row):
            for i in range(out.shape[0]):
                out[i] += weight * _half_to_f32(row[i])
        return add_half

    def add_float(out, weight, row):
        for i in range(out.shape[0]):
            out[i] += weight * row[i]
    return add_float


@njit(cache=True, nogil=True, fastmath=True)
def _retrieved_attention_kernel(q, keys, values, ids, scale, out, lse, weights):
    """q [H, m, D] float32, keys/values [H_kv, N, D] (float32 or uint16 bits of float16), ids [H, m, k] int64
    (-1 = none) -> fills out [H, m, D], lse [H, m], weights [H, m, k] (float32)."""
    n_heads, m, _ = q.shape
    group = n_heads // keys.shape[0]
    for h in range(n_heads):
        kv = h // group
        for i in range(m):
            row_ids = ids[h, i]
            best = np.float32(-np.inf)
            for t in range(row_ids.shape[0]):
                v = row_ids[t]
                if v >= 0:
                    s = _key_dot(q[h, i], keys[kv, v]) * scale
                    weights[h, i, t] = s
                    best = max(best, s)
            out[h, i] = 0.0
            if best == -np.inf:  # nothing retrieved: an empty set (lse -inf, o 0)
                lse[h, i] = -np.inf
                weights[h, i] = 0.0
                continue
            total = np.float32(0.0)
            for t in range(row_ids.shape[0]):
                if row_ids[t] >= 0:
                    weights[h, i, t] = np.exp(weights[h, i, t] - best)
                    total += weights[h, i, t]
                else:
                    weights[h, i, t] = 0.0
            for t in range(row_ids.shape[0]):
                v = row_ids[t]
                if v >= 0:
                    weights[h, i, t] /= total
                    _add_scaled(out[h, i], weights[h, i, t], values[kv, v])
            lse[h, i] = best + np.log(total)


SUPPORTED_KV_DTYPES = (torch.float32, torch.float16)


def _as_kernel_array(x: torch.Tensor) -> np.ndarray:
    """A CPU float32 tensor as numpy, or a float16 one as its uint16 bits, in place (never a copy of the keys)."""
    array = x.detach().numpy()
    return array.view(np.uint16) if array.dtype == np.float16 else array


def retrieved_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ids: torch.Tensor, scale: float
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`engine.attention.retrieved_attention(..., return_weights=True)` for CPU tensors, compiled.

    Args:
        q: [H, m, D] queries.
        k, v: [H_kv, N, D] CPU tensors of a SUPPORTED_KV_DTYPES dtype (read in place).
        ids: [H, m, top_k] int64 positions in 0..N-1, -1 for none.
        scale: the softmax scale.
    Returns:
        o [H, m, D], lse [H, m] over the retrieved keys only, weights [H, m, top_k] (0 for padding), float32.
    """
    if k.dtype not in SUPPORTED_KV_DTYPES or v.dtype not in SUPPORTED_KV_DTYPES:
        raise TypeError(f"compiled retrieved attention reads float32 or float16 K/V, not {k.dtype}/{v.dtype}")
    n_heads, m, dim = q.shape
    out = np.empty((n_heads, m, dim), dtype=np.float32)
    lse = np.empty((n_heads, m), dtype=np.float32)
    weights = np.empty(tuple(ids.shape), dtype=np.float32)
    _retrieved_attention_kernel(
        np.ascontiguousarray(q.detach().float().numpy()), _as_kernel_array(k), _as_kernel_array(v),
        np.ascontiguousarray(ids.numpy(), dtype=np.int64), np.float32(scale), out, lse, weights,
    )
    return torch.from_numpy(out), torch.from_numpy(lse), torch.from_numpy(weights)
