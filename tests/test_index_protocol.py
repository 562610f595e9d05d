"""Protocol conformance of every registered key index (engine.index.base.LayerIndex)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.index import (
    EXACT,
    FLAT,
    IndexParams,
    build_layer_index,
    index_methods,
    kv_head_of,
    load_layer_index,
)

H, H_KV, D = 4, 2, 16
N, NQ, M, K = 600, 400, 8, 20
GENEROUS = 512  # effort at which approximate methods must reach recall 0.95
PARAMS = IndexParams(effort=64, n_neighbors_per_query=32, degree=16, hnsw_m=16, threads=1)
EXACT_METHODS = {EXACT, FLAT}


def _data(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """keys [H_kv, n, D], train queries [H, NQ, D], test queries [H, M, D]; queries lean away from keys
    (as real decode queries do) and the two KV groups live in different directions."""
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(H_KV, n, D)).astype(np.float32)
    keys[0, :, 0] += 2.0
    keys[1, :, 1] += 2.0
    shift = np.zeros((H, 1, D), np.float32)
    shift[kv_head_of(H, H_KV), 0, kv_head_of(H, H_KV) + 2] = 1.5
    train = (rng.normal(size=(H, NQ, D)) + shift).astype(np.float32)
    test = (rng.normal(size=(H, M, D)) + shift).astype(np.float32)
    return keys, train, test


def _exact_ids(keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """numpy reference: [H, m, min(k, N)] best-first ids of each head's own KV group."""
    group_keys = keys[kv_head_of(queries.shape[0], keys.shape[0])]  # [H, N, D]
    scores = np.einsum("hmd,hnd->hmn", queries, group_keys)
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k (truth [..., k]) found among ids [..., k'] (-1 ignored)."""
    found = ids.reshape(-1, ids.shape[-1])
    wanted = truth.reshape(-1, truth.shape[-1])
    hits = sum(len(set(a[a >= 0].tolist()) & set(b.tolist())) for a, b in zip(found, wanted, strict=True))
    return hits / wanted.size


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _data()


@pytest.fixture(scope="module")
def built(data):
    keys, train, _ = data
    return {method: build_layer_index(method, keys, train, PARAMS) for method in index_methods()}


def test_expected_methods_registered() -> None:
    assert {"exact", "flat", "ivf", "hnsw"} <= set(index_methods())


@pytest.mark.parametrize("method", index_methods())
def test_shapes_and_validity(method: str, data, built) -> None:
    keys, _, queries = data
    index = built[method]
    assert index.method == method
    assert (index.n_heads, index.n_kv_heads, index.n_keys) == (H, H_KV, N)
    result = index.search(queries, K)
    assert result.ids.shape == (H, M, K) and result.ids.dtype == np.int64
    assert result.scanned.shape == (H, M) and result.scanned.dtype == np.int64
    assert ((result.ids >= -1) & (result.ids < N)).all()
    assert ((result.scanned >= 0) & (result.scanned <= N)).all()
    if method in EXACT_METHODS:
        assert (result.scanned == N).all()
    group_keys = keys[kv_head_of(H, H_KV)]
    for h in range(H):
        for i in range(M):
            row = result.ids[h, i]
            found = row[row >= 0]
            assert len(np.unique(found)) == len(found), "duplicate ids"
            assert (row[len(found) :] == -1).all(), "-1 only as trailing padding"
            scores = group_keys[h, found] @ queries[h, i]
            assert (np.diff(scores) <= 1e-4).all(), "not sorted best first"


@pytest.mark.parametrize("method", index_methods())
def test_padding_when_k_exceeds_n(method: str) -> None:
    keys, train, queries = _data(seed=1, n=40)
    index = build_layer_index(method, keys, train, PARAMS)
    result = index.search(queries, 64, effort=GENEROUS)
    assert result.ids.shape == (H, M, 64)
    assert (result.ids[..., 40:] == -1).all()
    if method in EXACT_METHODS:
        truth = _exact_ids(keys, queries, 40)
        assert np.array_equal(np.sort(result.ids[..., :40], axis=-1), np.sort(truth, axis=-1))


@pytest.mark.parametrize("method", index_methods())
def test_recall_at_generous_effort(method: str, data, built) -> None:
    keys, _, queries = data
    truth = _exact_ids(keys, queries, K)
    result = built[method].search(queries, K, effort=GENEROUS)
    recall = _recall(result.ids, truth)
    if method in EXACT_METHODS:
        assert recall == 1.0
        assert np.array_equal(result.ids, truth) or recall == 1.0
    else:
        assert recall >= 0.95, f"{method} recall {recall:.3f}"


@pytest.mark.parametrize("method", index_methods())
def test_gqa_grouping(method: str, data, built) -> None:
    """Each query head must search its own group's keys: swapping the heads' queries changes results
    exactly as searching the other group would."""
    keys, _, queries = data
    index = built[method]
    truth = _exact_ids(keys, queries, K)
    wrong = _exact_ids(keys[::-1].copy(), queries, K)  # every head reading the other group
    result = index.search(queries, K, effort=GENEROUS)
    assert _recall(result.ids, truth) > 0.9
    assert _recall(result.ids, wrong) < 0.5


@pytest.mark.parametrize("method", index_methods())
def test_round_trip(method: str, data, built) -> None:
    keys, _, queries = data
    index = built[method]
    arrays = index.to_arrays()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert all(v.dtype != object for v in arrays.values())
    restored = load_layer_index(method, {name: np.array(v) for name, v in arrays.items()}, keys, PARAMS)
    assert (restored.n_heads, restored.n_kv_heads, restored.n_keys) == (H, H_KV, N)
    for effort in (16, GENEROUS):
        a = index.search(queries, K, effort=effort)
        b = restored.search(queries, K, effort=effort)
        assert np.array_equal(a.ids, b.ids)
        assert np.array_equal(a.scanned, b.scanned)


@pytest.mark.parametrize("method", index_methods())
def test_single_query_decode_shape(method: str, data, built) -> None:
    """Decode calls search with m = 1 and the default effort."""
    _, _, queries = data
    result = built[method].search(np.ascontiguousarray(queries[:, :1]), K)
    assert result.ids.shape == (H, 1, K) and result.scanned.shape == (H, 1)


def test_unknown_method_raises(data) -> None:
    keys, train, _ = data
    with pytest.raises(ValueError):
        build_layer_index("nope", keys, train)


@pytest.mark.parametrize("method", [m for m in index_methods() if m not in EXACT_METHODS])
def test_low_effort_scans_less(method: str, data, built) -> None:
    _, _, queries = data
    low = built[method].search(queries, K, effort=8).scanned.mean()
    high = built[method].search(queries, K, effort=GENEROUS).scanned.mean()
    assert low < N and low <= high


@pytest.mark.parametrize("method", index_methods())
def test_k_per_query_head(method: str, data, built) -> None:
    """The retrieval budget asks each query head for its own k: ids [H, M, max k], best first, -1 past each head's
    k; exact methods return each head's exact top-k, approximate ones reach recall 0.95 at a generous effort."""
    keys, _, queries = data
    ks = np.array([5, K, 1, 3 * K])
    result = built[method].search(queries, ks, effort=GENEROUS)
    assert result.ids.shape == (H, M, 3 * K) and result.scanned.shape == (H, M)
    for h, k in enumerate(ks):
        assert (result.ids[h, :, k:] == -1).all() and (result.ids[h, :, :k] >= 0).all()
        truth = _exact_ids(keys, queries, k)[h : h + 1]
        found = result.ids[h : h + 1, :, :k]
        if method in EXACT_METHODS:
            assert np.array_equal(np.sort(found, axis=-1), np.sort(truth, axis=-1))
        else:
            assert _recall(found, truth) >= 0.95
