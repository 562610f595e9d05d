"""The attention-aware graph index ("retrieval") against exact top-k on attention-like data."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from engine.index.base import IndexParams, build_layer_index, index_methods, kv_head_of, load_layer_index
from engine.index.exact import ExactIndex
from engine.index.graph import SCAN_SHARE, GraphIndex, build_graph_index
from engine.index.kernels import half_to_f32, half_to_f32_by_bits

D = 32


def attention_like(n_heads: int, n_kv: int, n_keys: int, n_train: int, n_test: int, seed: int = 0):
    """Keys ~ clustered around +mu, queries ~ around -mu (out of distribution, as in attention), with
    each query aimed at a few key clusters. Returns keys [H_kv, N, D], train [H, n, D], test [H, m, D]."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=D) * 1.5
    centres = rng.normal(size=(n_kv, 24, D)) * 0.8
    labels = rng.integers(0, 24, size=(n_kv, n_keys))
    keys = mu + centres[np.arange(n_kv)[:, None], labels] + rng.normal(size=(n_kv, n_keys, D))
    kv = kv_head_of(n_heads, n_kv)

    def queries(m: int) -> np.ndarray:
        aim = rng.integers(0, 24, size=(n_heads, m))
        return -mu + 2.0 * centres[kv[:, None], aim] + rng.normal(size=(n_heads, m, D))

    return keys.astype(np.float32), queries(n_train).astype(np.float32), queries(n_test).astype(np.float32)


def exact_top(keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """[H, m, k] exact ids by inner product (GQA mapping applied)."""
    kv = kv_head_of(queries.shape[0], keys.shape[0])
    scores = np.einsum("hmd,hnd->hmn", queries, keys[kv])
    return np.argsort(-scores, axis=2, kind="stable")[:, :, :k]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[-1]
    pairs = zip(found.reshape(-1, k), exact.reshape(-1, k), strict=True)
    return float(np.mean([len(np.intersect1d(f, e)) / k for f, e in pairs]))


@pytest.fixture(scope="module")
def data():
    return attention_like(n_heads=4, n_kv=2, n_keys=3000, n_train=1500, n_test=40)


@pytest.fixture(scope="module")
def index(data) -> GraphIndex:
    keys, train, _ = data
    return build_layer_index("retrieval", keys, train, IndexParams(query_stride=2))


def test_registered() -> None:
    assert "retrieval" in index_methods()


def test_recall_high_while_scanning_few(data, index) -> None:
    keys, _, test = data
    res = index.search(test, 10, effort=64)
    assert recall(res.ids, exact_top(keys, test, 10)) >= 0.9
    assert res.scanned.mean() < 0.5 * keys.shape[1]
    assert res.scanned.shape == (4, 40) and res.scanned.dtype == np.int64


def test_recall_grows_with_effort(data, index) -> None:
    keys, _, test = data
    exact = exact_top(keys, test, 8)
    results = [index.search(test, 8, effort=e) for e in (8, 32, 128)]
    recalls = [recall(r.ids, exact) for r in results]
    scans = [r.scanned.mean() for r in results]
    assert recalls[0] <= recalls[1] <= recalls[2] and recalls[0] < recalls[2]
    assert scans[0] < scans[1] < scans[2]


def test_the_queue_is_at_least_k(data, index) -> None:
    """Asking for more keys than the effort searches as far as it retrieves: the same as effort = k."""
    keys, _, test = data
    low, at_k = index.search(test, 50, effort=8), index.search(test, 50, effort=50)
    np.testing.assert_array_equal(low.ids, at_k.ids)
    assert recall(low.ids, exact_top(keys, test, 50)) >= 0.9


def test_effort_at_least_n_is_exact(data, index) -> None:
    keys, _, test = data
    res = index.search(test, 20, effort=keys.shape[1])
    np.testing.assert_array_equal(np.sort(res.ids, axis=2), np.sort(exact_top(keys, test, 20), axis=2))


def test_ids_valid_unique_and_sorted(data, index) -> None:
    keys, _, test = data
    res = index.search(test, 30, effort=40)
    assert res.ids.shape == (4, 40, 30) and res.ids.dtype == np.int64
    assert (res.ids >= 0).all() and (res.ids < keys.shape[1]).all()
    kv = kv_head_of(4, 2)
    for h in range(4):
        for i in range(test.shape[1]):
            row = res.ids[h, i]
            assert len(np.unique(row)) == len(row)
            scores = keys[kv[h], row] @ test[h, i]
            assert (np.diff(scores) <= 1e-5).all()


def test_parallel_and_serial_paths_agree(data, index) -> None:
    _, _, test = data
    many = index.search(test, 10, effort=32)  # 160 searches: parallel kernel
    for i in range(3):
        one = index.search(np.ascontiguousarray(test[:, i : i + 1]), 10, effort=32)  # serial kernel
        np.testing.assert_array_equal(one.ids[:, 0], many.ids[:, i])
        np.testing.assert_array_equal(one.scanned[:, 0], many.scanned[:, i])


def test_round_trip_gives_identical_results(data, index) -> None:
    keys, _, test = data
    arrays = {name: np.array(a) for name, a in index.to_arrays().items()}
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())
    restored = load_layer_index("retrieval", arrays, keys)
    a, b = index.search(test, 25, effort=48), restored.search(test, 25, effort=48)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scanned, b.scanned)


def test_gqa_head_searches_its_group_keys() -> None:
    keys, train, test = attention_like(n_heads=4, n_kv=2, n_keys=400, n_train=300, n_test=8, seed=1)
    keys[1] = -keys[1]  # make the two groups' answers clearly different
    index = build_layer_index("retrieval", keys, train)
    res = index.search(test, 5, effort=400)
    np.testing.assert_array_equal(res.ids, exact_top(keys, test, 5))
    assert not np.array_equal(exact_top(keys[[0, 0]], test, 5), exact_top(keys, test, 5))


@pytest.mark.parametrize("n_keys", [1, 2, 7])
def test_tiny_and_k_larger_than_n(n_keys: int) -> None:
    keys, train, test = attention_like(n_heads=2, n_kv=1, n_keys=n_keys, n_train=5, n_test=3, seed=2)
    index = build_layer_index("retrieval", keys, train)
    res = index.search(test, 10, effort=4)
    assert res.ids.shape == (2, 3, 10)
    np.testing.assert_array_equal(res.ids[:, :, :n_keys], exact_top(keys, test, n_keys))
    assert (res.ids[:, :, n_keys:] == -1).all()
    assert (res.scanned == n_keys).all()


def test_no_training_queries_still_searchable() -> None:
    keys, _, test = attention_like(n_heads=2, n_kv=1, n_keys=300, n_train=1, n_test=5, seed=3)
    index = build_layer_index("retrieval", keys, np.zeros((2, 0, D), np.float32))
    res = index.search(test, 10, effort=300)
    np.testing.assert_array_equal(res.ids, exact_top(keys, test, 10))


def test_key_neighbours_are_the_exact_nearest_other_keys_nearest_first():
    from engine.index.knn import key_neighbours

    keys = np.random.default_rng(1).standard_normal((500, 16)).astype(np.float32)
    ids, dist = key_neighbours(keys, 8)
    squared = ((keys[:, None, :] - keys[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(squared, np.inf)
    np.testing.assert_array_equal(ids, np.argsort(squared, axis=1)[:, :8])
    np.testing.assert_allclose(dist, np.sort(squared, axis=1)[:, :8], rtol=1e-4, atol=1e-4)
    few_ids, few_dist = key_neighbours(keys[:4], 8)  # fewer other keys than asked: -1 / inf padded
    assert few_ids.shape == (4, 8) and np.all(few_ids[:, 3:] == -1) and np.all(np.isinf(few_dist[:, 3:]))
    assert all(set(few_ids[i, :3]) == set(range(4)) - {i} for i in range(4))


def test_approximate_key_neighbours_match_exact_ones_closely():
    from engine.index.knn import approximate_key_neighbours, key_neighbours

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((3000, 16)).astype(np.float32)
    exact_ids, _ = key_neighbours(keys, 8)
    approx_ids, approx_dist = approximate_key_neighbours(keys, 8)
    assert approx_ids.shape == (3000, 8)
    assert not np.any(approx_ids == np.arange(3000)[:, None]), "a key is never its own neighbour"
    assert np.all(np.diff(approx_dist, axis=1) >= -1e-5), "nearest first"
    overlap = np.mean([len(set(a) & set(e)) / 8 for a, e in zip(approx_ids, exact_ids, strict=True)])
    assert overlap > 0.9


def test_float16_keys_are_searched_in_place_and_rank_like_their_float32_values():
    """The cache keeps offloaded keys in float16: the graph searches them without a float32 copy, and a
    search that scans every key ranks exactly as the float32 values do (subnormal and large halves too)."""
    rng = np.random.default_rng(3)
    keys = rng.standard_normal((2, 600, 16)).astype(np.float16)
    keys[0, :50] *= np.float16(1e-3)  # values down to half subnormals (< 6.1e-5)
    keys[1, :50] = np.float16(-6.0e4) * (rng.random((50, 16)) > 0.5)  # large magnitudes, signed zeros
    train = rng.standard_normal((4, 200, 16)).astype(np.float32)
    index = build_graph_index(keys, train, IndexParams(effort=32))
    assert index.keys.dtype == np.uint16 and np.shares_memory(index.keys, keys)
    as_float32 = GraphIndex(keys.astype(np.float32), 4, index.indptr, index.indices, index.entries, index.params)
    queries = rng.standard_normal((4, 5, 16)).astype(np.float32)
    half, single = index.search(queries, 10), as_float32.search(queries, 10)
    np.testing.assert_array_equal(half.ids, single.ids)
    np.testing.assert_array_equal(half.scanned, single.scanned)
    everything = index.search(queries, 10, effort=600)
    exact = ExactIndex(keys.astype(np.float32), 4).search(queries, 10)
    np.testing.assert_array_equal(np.sort(everything.ids, axis=-1), np.sort(exact.ids, axis=-1))


def reference_search(q, keys, indptr, indices, entries, size: int, k: int) -> tuple[list[int], int]:
    """The graph search's definition in plain Python: scan the entry points; while one of the best `size`
    keys scanned so far is unexpanded, expand the best such key (scan its unscanned neighbours). The answer
    is the best k of every key scanned; returns (answer ids best first, keys scanned)."""
    score: dict[int, float] = {}
    for v in entries:
        if v >= 0:
            score.setdefault(int(v), float(q @ keys[v]))
    expanded: set[int] = set()
    while True:
        best = sorted(score, key=lambda v: -score[v])[:size]
        todo = [v for v in best if v not in expanded]
        if not todo:
            break
        expanded.add(todo[0])
        for v in indices[indptr[todo[0]] : indptr[todo[0] + 1]]:
            score.setdefault(int(v), float(q @ keys[v]))
    return sorted(score, key=lambda v: -score[v])[:k], len(score)


@pytest.mark.parametrize(("size", "k"), [(4, 10), (16, 10), (40, 25), (40, 60)])
def test_search_follows_its_definition_exactly(size: int, k: int) -> None:
    """The compiled search (heaps, prefetching, a reused workspace) returns exactly what the plain
    definition does, with a queue of max(effort, k) (k > effort included) and fewer queue slots than entry
    points. Integer-valued vectors make every q·k exact in float32, so the comparison does not depend on
    summation order."""
    keys, train, test = attention_like(n_heads=2, n_kv=1, n_keys=1500, n_train=600, n_test=6, seed=5)
    keys, test = np.round(keys * 40), np.round(test * 40)
    index = build_layer_index("retrieval", keys, train)
    found = index.search(test, k, effort=size)
    for h in range(2):
        for i in range(test.shape[1]):
            ids, scanned = reference_search(
                test[h, i], keys[0], index.indptr[index.graph_of[h]], index.indices,
                index.entries[index.graph_of[h]], max(size, k), k
            )
            assert found.scanned[h, i] == scanned
            got = found.ids[h, i, : len(ids)]
            assert set(got) == set(ids) and (found.ids[h, i, len(ids) :] == -1).all()
            np.testing.assert_array_equal(keys[0, got] @ test[h, i], keys[0, ids] @ test[h, i])  # ties in any order


@pytest.mark.parametrize("per_kv_head", [True, False])
def test_one_graph_per_kv_head_or_per_query_head(data, per_kv_head: bool) -> None:
    """Shared graphs (one per KV head, trained on its query heads' pooled queries) and the paper's one per
    query head both find the exact top-k; the shared layout stores a graph per KV head and survives a round
    trip with its head mapping."""
    keys, train, test = data
    index = build_layer_index("retrieval", keys, train, IndexParams(query_stride=2, graph_per_kv_head=per_kv_head))
    n_graphs = 2 if per_kv_head else 4
    assert index.indptr.shape == (n_graphs, keys.shape[1] + 1) and index.entries.shape[0] == n_graphs
    np.testing.assert_array_equal(index.graph_of, [0, 0, 1, 1] if per_kv_head else [0, 1, 2, 3])
    assert recall(index.search(test, 10, effort=64).ids, exact_top(keys, test, 10)) >= 0.9
    restored = load_layer_index("retrieval", index.to_arrays(), keys)
    np.testing.assert_array_equal(restored.graph_of, index.graph_of)
    np.testing.assert_array_equal(restored.search(test, 10, effort=32).ids, index.search(test, 10, effort=32).ids)


def test_indexes_saved_before_shared_graphs_still_load(data) -> None:
    """An index saved by an earlier version (one graph per query head, no graph_of array) loads as such."""
    keys, train, test = data
    per_query_head = build_layer_index("retrieval", keys, train, IndexParams(query_stride=2, graph_per_kv_head=False))
    arrays = {name: a for name, a in per_query_head.to_arrays().items() if name != "graph_of"}
    restored = load_layer_index("retrieval", arrays, keys)
    np.testing.assert_array_equal(restored.graph_of, [0, 1, 2, 3])
    np.testing.assert_array_equal(restored.search(test, 10).ids, per_query_head.search(test, 10).ids)


def test_decode_searches_reuse_their_workspace_without_carrying_anything_over(data) -> None:
    """Decode-sized searches reuse a per-thread workspace across calls and layers; interleaved with another
    layer's searches (other graph, degree and effort) they return exactly what a batch search returns, where
    every search gets a fresh workspace."""
    keys, train, test = data
    layer = build_layer_index("retrieval", keys, train, IndexParams(query_stride=2))
    other = build_layer_index("retrieval", np.ascontiguousarray(keys[:, ::-1]), train, IndexParams(degree=8))
    batch = layer.search(test, 10, effort=24)  # 4 heads x 40 queries: the parallel kernel
    for i in range(test.shape[1]):
        one = np.ascontiguousarray(test[:, i : i + 1])
        other.search(one, 10, effort=40)
        found = layer.search(one, 10, effort=24)
        np.testing.assert_array_equal(found.ids[:, 0], batch.ids[:, i])
        np.testing.assert_array_equal(found.scanned[:, 0], batch.scanned[:, i])


def test_parallel_searches_reuse_one_workspace_per_thread_without_carrying_anything_over(data) -> None:
    """Many-head searches (the parallel kernel) keep one workspace per numba thread across calls; interleaved with
    another layer's (other graph, degree and effort) they repeat their first answer and the serial kernel's."""
    keys, train, test = data
    layer = build_layer_index("retrieval", keys, train, IndexParams(query_stride=2))
    other = build_layer_index("retrieval", np.ascontiguousarray(keys[:, ::-1]), train, IndexParams(degree=8))
    first = layer.search(test, 10, effort=24)  # 4 heads x 40 queries
    for _ in range(3):
        other.search(test, 10, effort=40)
        again = layer.search(test, 10, effort=24)
        np.testing.assert_array_equal(again.ids, first.ids)
        np.testing.assert_array_equal(again.scanned, first.scanned)
    for i in range(0, test.shape[1], 13):
        one = layer.search(np.ascontiguousarray(test[:, i : i + 1]), 10, effort=24)  # 4 searches: serial kernel
        np.testing.assert_array_equal(one.ids[:, 0], first.ids[:, i])


@njit
def _convert_halves(bits, native, by_bits):
    for i in range(bits.shape[0]):
        native[i] = half_to_f32(bits[i])
        by_bits[i] = half_to_f32_by_bits(bits[i])


def test_float16_keys_are_converted_exactly_on_both_routes():
    """The search and the retrieved attention read float16 keys as bits: the CPU's conversion (where it has
    one) and the integer route (every other CPU) must both give numpy's float32 for every finite half."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    halves = bits.view(np.float16)
    finite = np.isfinite(halves)
    native, by_bits = np.empty(bits.shape, np.float32), np.empty(bits.shape, np.float32)
    _convert_halves(bits, native, by_bits)
    expected = halves[finite].astype(np.float32).view(np.uint32)  # compared as bits: -0.0 and subnormals too
    np.testing.assert_array_equal(native[finite].view(np.uint32), expected)
    np.testing.assert_array_equal(by_bits[finite].view(np.uint32), expected)


def unconnected_graph(n_keys: int = 2000, seed: int = 1):
    """Structureless keys [N, D] (as a random-weight model gives) and the lists a projection of 100 queries' top-32
    leaves them: most keys are unreachable from the entry. Returns keys, adj [N, cap], deg [N], m, entry."""
    import torch

    from engine.index.graph_build import project
    from engine.index.knn import exact_knn
    from engine.sizing import GRAPH_OVERFLOW_SLACK

    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n_keys, D), dtype=np.float32)
    queries = rng.standard_normal((100, D), dtype=np.float32)
    knn, _ = exact_knn(torch.from_numpy(keys), torch.from_numpy(queries), 32)
    m = 16
    adj, deg = project(keys, knn, m, m * GRAPH_OVERFLOW_SLACK)
    return keys, adj, deg, m, int(knn[0, 0])


def reachable(adj: np.ndarray, deg: np.ndarray, entry: int) -> np.ndarray:
    """[N] bool: keys reachable from entry (plain Python)."""
    seen, stack = np.zeros(len(deg), dtype=bool), [entry]
    seen[entry] = True
    while stack:
        x = stack.pop()
        for c in adj[x, : deg[x]]:
            if not seen[c]:
                seen[c] = True
                stack.append(int(c))
    return seen


def test_connect_makes_every_key_reachable_from_the_entry():
    from engine.index.graph_build import connect

    keys, adj, deg, m, entry = unconnected_graph()
    unreached_before = int((~reachable(adj, deg, entry)).sum())
    assert unreached_before > 300
    linked = connect(keys, adj, deg, entry, m)
    assert 0 < linked <= unreached_before
    assert reachable(adj, deg, entry).all()
    assert deg.max() <= adj.shape[1]


def test_connect_links_each_unreached_key_from_its_nearest_reached_key_with_room(monkeypatch):
    """With batches of one key, the batched connect is its definition: in key order, each key still unreachable is
    linked from the nearest reachable key whose list has room (reference in plain Python)."""
    from engine.index import graph_build

    keys, adj, deg, m, entry = unconnected_graph(n_keys=600, seed=2)
    want_adj, want_deg = adj.copy(), deg.copy()
    cap = adj.shape[1]
    buf_i, buf_d = np.empty(cap + 1, np.int32), np.empty(cap + 1, np.float32)
    seen = reachable(want_adj, want_deg, entry)
    assert not seen.all()
    for x in range(len(keys)):
        if seen[x]:
            continue
        dist = ((keys - keys[x]) ** 2).sum(1)
        dist[~seen | (want_deg >= cap)] = np.inf
        parent = int(np.argmin(dist))
        want_adj[parent, want_deg[parent]] = x
        want_deg[parent] += 1
        graph_build.add_edge(keys, want_adj, want_deg, x, parent, m, buf_i, buf_d)
        seen |= reachable(want_adj, want_deg, x)
    monkeypatch.setattr(graph_build, "CONNECT_BATCH", 1)
    graph_build.connect(keys, adj, deg, entry, m)
    assert np.array_equal(deg, want_deg)
    for x in range(len(keys)):
        assert np.array_equal(np.sort(adj[x, : deg[x]]), np.sort(want_adj[x, : want_deg[x]]))


def test_exact_top_k_in_chunks_of_bounded_scores_finds_the_same_keys(monkeypatch):
    """The build's exact top-k scores a chunk of queries at a time, fewer per chunk where N is large (so that a GPU
    host's build adds a bounded amount to the prefill's memory); the chunking must not change what it finds."""
    import torch

    from engine.index.knn import exact_knn
    from engine.sizing import knn_chunk_rows

    rng = np.random.default_rng(2)
    keys = torch.from_numpy(rng.standard_normal((700, 16)).astype(np.float32))
    queries = torch.from_numpy(rng.standard_normal((50, 16)).astype(np.float32))
    whole = {metric: exact_knn(keys, queries, 12, metric) for metric in ("ip", "l2")}  # one chunk of 50
    monkeypatch.setattr("engine.sizing.KNN_SCORE_BYTES", 3 * 4 * 700)
    assert knn_chunk_rows(700) == 3
    for metric, (want_ids, want_scores) in whole.items():
        ids, scores = exact_knn(keys, queries, 12, metric)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_graphs_built_at_once_take_turns_on_an_accelerator(monkeypatch, data):
    """On a GPU host the exact top-k searches of every graph being built share the device with the prefill: they
    run one at a time, so the builds add one search's memory (engine.sizing.device_knn_bytes), not one per graph.
    Run here with the CPU standing in for the accelerator; the graphs come out the same."""
    import threading
    import time

    import engine.index.knn as knn

    keys, train, test = data
    params = IndexParams(query_stride=2, threads=4, graph_per_kv_head=False)  # 4 graphs built at once
    reference = build_layer_index("retrieval", keys, train, params)
    running, most = [0], [0]
    lock = threading.Lock()
    real_knn = knn.exact_knn

    def counted_knn(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # long enough for the other graphs' threads to arrive
        try:
            return real_knn(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(knn, "exact_knn", counted_knn)
    monkeypatch.setattr(knn, "shares_one_accelerator", lambda device: True)
    taking_turns = build_layer_index("retrieval", keys, train, params)
    assert most[0] == 1
    np.testing.assert_array_equal(taking_turns.indices, reference.indices)
    np.testing.assert_array_equal(taking_turns.search(test, 10).ids, reference.search(test, 10).ids)


def test_a_head_whose_queue_holds_a_large_share_of_the_keys_scans_them_all(data, index) -> None:
    """Scanning returns the exact top-k, best first, and counts every key; a head below the share still searches."""
    keys, _, test = data
    n_keys = keys.shape[1]
    big = int(np.ceil(SCAN_SHARE * n_keys))
    res = index.search(test, np.array([big, 5, big, 5]), effort=1)
    assert (res.scanned[[0, 2]] == n_keys).all() and (res.scanned[[1, 3]] < n_keys).all()
    truth = exact_top(keys, test, big)
    for h in (0, 2):
        found = res.ids[h]
        np.testing.assert_array_equal(np.sort(found, axis=-1), np.sort(truth[h], axis=-1))
        scores = np.einsum("md,mkd->mk", test[h], keys[h // 2][found])
        assert (np.diff(scores, axis=-1) <= 1e-5).all()
