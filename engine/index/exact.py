"""Method "exact": the oracle. Exact top-k by inner product over every indexed key.

One batched matmul per layer: the queries of a GQA group are stacked ([H_kv, g*m, D]) and multiplied
against their KV head's keys ([H_kv, N, D]) without copying keys per query head (no repeat_kv).
Every search scans all N keys.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from engine.index.base import IndexParams, SearchResult, keep_per_head, per_head_k, register_index

EXACT = "exact"


def exact_topk(keys: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k per query head, GQA-grouped.

    Args:
        keys: [H_kv, N, D] float32.
        queries: [H, m, D] float32, H a multiple of H_kv (head h reads KV head h // (H // H_kv)).
        k: results wanted; at most N are returned.

    Returns:
        scores [H, m, min(k, N)] float32 and ids [H, m, min(k, N)] int64, best first.
    """
    n_kv, n_keys, dim = keys.shape
    n_heads, m, _ = queries.shape
    group = n_heads // n_kv
    kk = min(k, n_keys)
    stacked = queries.reshape(n_kv, group * m, dim)  # heads of a group are consecutive
    # K @ q^T streams the keys row-major (memory-bound at decode); q @ K^T was 2-5x slower on CPU.
    scores = torch.bmm(keys, stacked.transpose(1, 2)).transpose(1, 2)  # [H_kv, g*m, N] view
    top_scores, top_ids = scores.topk(kk, dim=-1, largest=True, sorted=True)
    return top_scores.reshape(n_heads, m, kk), top_ids.reshape(n_heads, m, kk)


class ExactIndex:
    """Brute-force scan over keys [H_kv, N, D]; keeps a zero-copy torch view of the numpy keys."""

    method: ClassVar[str] = EXACT

    def __init__(self, keys: np.ndarray, n_heads: int) -> None:
        keys = np.ascontiguousarray(keys, dtype=np.float32)
        self._keys_np = keys  # keeps the torch view's memory alive
        self._keys = torch.from_numpy(keys)
        self.n_heads = int(n_heads)
        self.n_kv_heads = keys.shape[0]
        self.n_keys = keys.shape[1]
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.n_heads} query heads cannot be grouped over {self.n_kv_heads} KV heads")

    def search(self, queries: np.ndarray, k: int | np.ndarray, effort: int | None = None) -> SearchResult:
        """queries [H, m, D], k an int or [H] -> ids [H, m, max k] (-1 padded past N and past each head's k),
        scanned [H, m] == N."""
        n_heads, m, _ = queries.shape
        if n_heads != self.n_heads:
            raise ValueError(f"expected {self.n_heads} query heads, got {n_heads}")
        ks = per_head_k(k, n_heads)
        k_max = int(ks.max(initial=0))
        ids = np.full((n_heads, m, k_max), -1, dtype=np.int64)
        if self.n_keys and k_max > 0:
            q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
            _, top = exact_topk(self._keys, q, k_max)
            ids[:, :, : top.shape[-1]] = top.numpy()
            keep_per_head(ids, ks)
        scanned = np.full((n_heads, m), self.n_keys, dtype=np.int64)
        return SearchResult(ids, scanned)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"n_heads": np.array(self.n_heads, dtype=np.int64)}


def build_exact(keys: np.ndarray, train_queries: np.ndarray, params: IndexParams) -> ExactIndex:
    """keys [H_kv, N, D], train_queries [H, Nq, D] (only H is read)."""
    return ExactIndex(keys, train_queries.shape[0])


def load_exact(arrays: dict[str, np.ndarray], keys: np.ndarray, params: IndexParams) -> ExactIndex:
    return ExactIndex(keys, int(arrays["n_heads"]))


register_index(EXACT, build_exact, load_exact)
