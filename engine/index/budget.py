"""The retrieval budget that follows the attention: how many offloaded keys each query head retrieves.

A fixed top-k gives every layer and head the same number of keys, but attention differs a lot between them: a
focused head puts nearly all its attention on the static set and a few keys, a diffuse one spreads it over
thousands. The budget here is set per layer and query head from what the prefill's own queries did.

**Calibration** (at index-build time, any index method). The calibration queries are the sampled prefill queries
that come after every offloaded key (those in the window: they see the whole offloaded set, as a decode query
does). For each, its exact attention over the prefix it sees gives its *attention curve*: the share of its
attention left on the offloaded keys ranked below the top k (by attention), for k on a geometric grid
(`budget_grid`). `AttentionCurves` keeps these per head; they are stored with the index, so changing the target
needs no rebuild.

**Budget** (`AttentionCurves.budgets`). For a target share t of the attention: per calibration query, the smallest
grid k whose left-out share is at most 1 - t; the head's budget is the `quantile` (by default 0.9) of those over
its calibration queries, at least `floor` (the top-k setting) and at most `cap` (by default every offloaded key).
t = 1 retrieves every key; a cap equal to the floor is a fixed top-k.

The share is of the query's whole attention (static set plus offloaded set), not of the offloaded part alone: the
static set is attended exactly at every step, so what the answer loses is the offloaded attention left out,
measured against everything the query attends to. A head whose offloaded keys hold 2% of its attention needs
none of them for t = 0.98, however spread those 2% are.

Shapes: H query heads, H_kv KV heads, m calibration queries per head, T prefix keys, N offloaded keys, G grid
points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.index.base import kv_head_of
from engine.index.knn import device_turn
from engine.sizing import CALIBRATION_QUERIES, GRID_STEPS_PER_DOUBLING

# CALIBRATION_QUERIES: the latest sampled prefill queries past the offloaded set, per head; GRID_STEPS_PER_DOUBLING:
# grid k grows by 2^(1/4) (about 19%) a step, so a budget overshoots its need by as much at most.
MIN_CALIBRATION_QUERIES = 8  # ...or, where the window holds fewer, the latest this many (masked causally)
CURVE_ARRAYS = ("budget_grid", "budget_left_out")  # how AttentionCurves is stored (to_arrays / from_arrays)


def budget_grid(n_keys: int) -> np.ndarray:
    """[G] int64: 0, then k growing by 2^(1/GRID_STEPS_PER_DOUBLING) (each integer once), ending at n_keys."""
    if n_keys <= 0:
        return np.zeros(1, dtype=np.int64)
    steps = int(np.ceil(np.log2(n_keys) * GRID_STEPS_PER_DOUBLING)) + 1
    ks = np.unique(np.round(2.0 ** (np.arange(steps) / GRID_STEPS_PER_DOUBLING)).astype(np.int64))
    return np.concatenate([[0], ks[ks < n_keys], [n_keys]]).astype(np.int64)


@dataclass(frozen=True)
class AttentionCurves:
    """Per query head, the calibration queries' attention curves over one layer's offloaded keys.

    grid [G] int64: k values (0 first, N last). left_out [H, m, G] float32: the share of each calibration query's
    attention on the offloaded keys ranked below its top grid[g] (so left_out[..., 0] is the offloaded set's whole
    share, and left_out[..., -1] is 0).
    """

    grid: np.ndarray
    left_out: np.ndarray

    @property
    def n_keys(self) -> int:
        return int(self.grid[-1])

    def needed(self, target: float) -> np.ndarray:
        """[H, m] int64: per calibration query, the smallest grid k whose left-out share is at most 1 - target."""
        if target >= 1.0:
            return np.full(self.left_out.shape[:2], self.n_keys, dtype=np.int64)
        reached = self.left_out <= np.float32(1.0 - target)
        reached[..., -1] = True  # every key leaves nothing out
        return self.grid[reached.argmax(axis=-1)]

    def budgets(self, target: float, quantile: float, floor: int, cap: int = 0) -> np.ndarray:
        """[H] int64 keys to retrieve per query head for a target share of the attention (see the module
        docstring); cap 0 = every offloaded key. At most N whatever floor is."""
        n_keys = self.n_keys
        cap = n_keys if cap <= 0 else min(cap, n_keys)
        if self.left_out.shape[1] == 0:
            need = np.zeros(self.left_out.shape[0], dtype=np.int64)
        else:
            need = np.quantile(self.needed(target), quantile, axis=1, method="higher").astype(np.int64)
        return np.minimum(np.maximum(need, min(floor, cap)), cap)

    def left_out_at(self, budgets: np.ndarray) -> np.ndarray:
        """[H, m] float32: the calibration queries' left-out share at each head's budget [H] (the smallest grid
        point at or above it, so an upper bound for budgets between grid points)."""
        at = np.minimum(np.searchsorted(self.grid, budgets), len(self.grid) - 1)
        return np.take_along_axis(self.left_out, at[:, None, None].repeat(self.left_out.shape[1], 1), axis=2)[..., 0]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"budget_grid": self.grid, "budget_left_out": self.left_out}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AttentionCurves:
        grid = np.asarray(arrays["budget_grid"], dtype=np.int64)
        left_out = np.asarray(arrays["budget_left_out"], dtype=np.float32)
        if grid.ndim != 1 or left_out.ndim != 3 or left_out.shape[2] != len(grid) or grid[0] != 0:
            raise ValueError(f"attention curves of shapes {grid.shape} and {left_out.shape} do not fit together")
        return cls(grid, left_out)


def calibration_positions(query_positions: np.ndarray, window_start: int) -> np.ndarray:
    """Indexes into query_positions [Nq] (ascending) of the calibration queries: the latest CALIBRATION_QUERIES at or
    after window_start (they see every offloaded key), or the latest MIN_CALIBRATION_QUERIES where fewer are."""
    past = np.flatnonzero(query_positions >= window_start)[-CALIBRATION_QUERIES:]
    if len(past) >= MIN_CALIBRATION_QUERIES:
        return past
    return np.arange(max(0, len(query_positions) - MIN_CALIBRATION_QUERIES), len(query_positions))


def attention_curves(queries: torch.Tensor, positions: np.ndarray, keys: torch.Tensor, off_start: int,
                     off_end: int, scale: float, device: str = "cpu") -> AttentionCurves:
    """The exact attention curves of calibration queries over a layer's prefix.

    Args:
        queries: [H, m, D] calibration queries (any float dtype), at prefix positions positions [m].
        keys: [H_kv, T, D] the layer's prefix keys in position order; keys off_start..off_end-1 are offloaded.
        scale: the attention's softmax scale.
        device: where to compute ("cuda" on a GPU host, as the index build's k-NN): the sort of every calibration
            query's N shares is most of the work (about a second per query head at 128K keys on one CPU core).
    Returns:
        AttentionCurves over the N = off_end - off_start offloaded keys. Each query attends causally (keys at
        positions <= its own); its left-out share at grid k is the attention on the offloaded keys it ranks below
        its top k, divided by its whole attention (float32 shares, summed from the smallest in float64).
    """
    n_heads, m, _ = queries.shape
    n_keys = off_end - off_start
    grid = budget_grid(n_keys)
    left_out = np.zeros((n_heads, m, len(grid)), dtype=np.float32)
    if m == 0 or n_keys == 0:
        return AttentionCurves(grid, left_out)
    kv_of = kv_head_of(n_heads, keys.shape[0])
    visible = torch.arange(keys.shape[1], device=device)[None, :] <= torch.as_tensor(positions, device=device)[:, None]
    at = torch.from_numpy(grid).to(device)
    with device_turn(device):  # on an accelerator, one build search at a time (engine.index.knn)
        for kv in range(keys.shape[0]):
            group_keys = keys[kv].to(device, torch.float32)  # [T, D]
            for h in np.flatnonzero(kv_of == kv):
                scores = (queries[h].to(device, torch.float32) @ group_keys.T) * scale  # [m, T]
                shares = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)[:, off_start:off_end]
                ranked = shares.sort(dim=-1).values.double()  # ascending: the smallest first
                below = ranked.cumsum(-1).flip(-1)  # below[:, k]: share of the keys ranked k and lower (best first)
                below = torch.cat([below, below.new_zeros(m, 1)], dim=-1)  # [m, N + 1]: none below the last key
                left_out[h] = below[:, at].float().cpu().numpy()
    return AttentionCurves(grid, left_out)
