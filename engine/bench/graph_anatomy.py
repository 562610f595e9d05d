"""How a query's exact top-k sits in the attention-aware graph: why a search scans what it scans.

Three measures per (graph, query), given the query's exact top-k ids (`answer`):

- `answer_components`: the pieces the answer falls into in the graph (an edge either way joins two answer keys).
  A best-first search can only cross between pieces through keys outside the answer.
- `answer_cover`: the answer plus every key it links to: what a search that expanded exactly the answer would
  score.
- `oracle_search_trace`: the keys scored by a search that is told the answer. From the index's entry points it
  expands only answer keys once it has scored them (best first), and steps outside the answer (the best scored
  key outside it first) only when no answer key is left to expand; `budget_for_recall` gives the keys it scores
  per query when its mean recall reaches a target, like the real search's at one queue size. Not a
  lower bound (a cleverer way across the pieces may exist), but a search that knows what it is looking for: if
  it scans about what the real search scans, the cost lies in the graph and the vectors, not in the search.

Graphs are one head's CSR arrays: indptr [N+1] int64 offsets into indices int32 (`GraphIndex.indptr[g]`).
"""

from __future__ import annotations

import heapq

import numpy as np


def answer_components(indptr: np.ndarray, indices: np.ndarray, answer: np.ndarray) -> int:
    """Connected pieces of answer [k] (key ids) under the graph's edges taken either way."""
    members = {int(a) for a in answer}
    parent = {a: a for a in members}

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a in members:
        for b in indices[indptr[a] : indptr[a + 1]].tolist():
            if b in members:
                parent[root(a)] = root(b)
    return len({root(a) for a in members})


def answer_cover(indptr: np.ndarray, indices: np.ndarray, answer: np.ndarray) -> int:
    """|answer ∪ the keys the answer links to|: what expanding exactly the answer [k] would score."""
    covered = {int(a) for a in answer}
    for a in answer.tolist():
        covered.update(indices[indptr[a] : indptr[a + 1]].tolist())
    return len(covered)


def oracle_search_trace(scores: np.ndarray, indptr: np.ndarray, indices: np.ndarray, entries: np.ndarray,
                        answer: np.ndarray) -> np.ndarray:
    """Run the told-the-answer search (module docstring) until it has scored the whole answer [k] or nothing is
    left to expand. scores [N]: the query's q·k of every key; entries [E] (-1 padded). Returns found [S] int: the
    answer keys among the first j + 1 keys it scored."""
    members = {int(a) for a in answer}
    scored: set[int] = set()
    found: list[int] = []
    inside: list[tuple[float, int]] = []  # unexpanded scored answer keys, best first (negated scores)
    outside: list[tuple[float, int]] = []

    def score(v: int) -> None:
        scored.add(v)
        hit = v in members
        found.append((found[-1] if found else 0) + hit)
        heapq.heappush(inside if hit else outside, (-float(scores[v]), v))

    for v in entries.tolist():
        if v >= 0 and v not in scored:
            score(v)
    while found[-1] < len(members) and (inside or outside):
        _, node = heapq.heappop(inside if inside else outside)
        for v in indices[indptr[node] : indptr[node + 1]].tolist():
            if v not in scored:
                score(v)
    return np.asarray(found)


def budget_for_recall(traces: list[np.ndarray], k: int, target: float) -> int | None:
    """The smallest number B of keys scored per query at which the traces' mean recall (answer keys found among
    the first B scored, / k) reaches target, as the real search's mean recall at one queue size; None if never."""
    longest = max(len(t) for t in traces)
    found = np.stack([np.pad(t, (0, longest - len(t)), mode="edge") for t in traces])  # [queries, longest]
    reached = np.flatnonzero(found.mean(axis=0) >= target * k)
    return int(reached[0]) + 1 if len(reached) else None


def graph_anatomy(index, keys: np.ndarray, queries: np.ndarray, truth: np.ndarray, target: float) -> dict[str, float]:
    """The three measures over every query of a GraphIndex. keys [H_kv, N, D] float32, queries [H, m, D],
    truth [H, m, k] exact ids. Returns the median number of pieces, the mean cover and the told-the-answer
    search's keys scanned at mean recall `target`, the last two as fractions of N (None if never reached)."""
    components, cover, traces = [], [], []
    n_keys = keys.shape[1]
    for h in range(queries.shape[0]):
        g = int(index.graph_of[h])
        indptr, entries = index.indptr[g], index.entries[g]
        scores = queries[h] @ keys[int(index.kv_of[h])].T  # [m, N]
        for i in range(queries.shape[1]):
            answer = truth[h, i]
            components.append(answer_components(indptr, index.indices, answer))
            cover.append(answer_cover(indptr, index.indices, answer))
            traces.append(oracle_search_trace(scores[i], indptr, index.indices, entries, answer))
    budget = budget_for_recall(traces, truth.shape[-1], target)
    return {
        "answer_components": float(np.median(components)),
        "answer_cover_fraction": float(np.mean(cover)) / n_keys,
        "oracle_fraction": None if budget is None else budget / n_keys,
    }
