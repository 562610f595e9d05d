"""The compressed-neighbour graph ("qgraph") against its reference, the exact graph ("retrieval"), and exact top-k:
at slack 1 it returns the exact graph's ids with fewer exact q·k; below 1 it trades recall for fewer still."""

from __future__ import annotations

import numpy as np
import pytest

from engine.index.base import IndexParams, build_layer_index, index_methods, load_layer_index
from engine.index.graph import build_graph_index
from engine.index.qgraph import CODE_MAX, CodedGraphIndex, code_graph, code_scales, encode_edges
from tests.test_index_graph import attention_like, exact_top, recall

PARAMS = IndexParams(query_stride=2, threads=1)


@pytest.fixture(scope="module")
def data():
    return attention_like(n_heads=4, n_kv=2, n_keys=3000, n_train=1500, n_test=40, seed=3)


@pytest.fixture(scope="module")
def graph(data):
    keys, train, _ = data
    return build_graph_index(keys, train, PARAMS)


@pytest.fixture(scope="module")
def coded(graph):
    return CodedGraphIndex(graph, *code_graph(graph))


def test_registered_as_an_index_method():
    assert "qgraph" in index_methods()


def test_the_codes_estimate_within_their_bound():
    """|q·k - sum_d q_d scale_d code_d| <= sum_d |q_d| scale_d / 2 for every key: what makes slack 1 lossless."""
    rng = np.random.default_rng(0)
    keys = (rng.normal(size=(500, 24)) * rng.uniform(0.1, 5, size=24)).astype(np.float32)
    scales = code_scales(keys)
    codes = encode_edges(keys, np.arange(500), scales)
    assert codes.dtype == np.int8 and np.abs(codes).max() == CODE_MAX
    for q in rng.normal(size=(20, 24)).astype(np.float32):
        estimate = (codes.astype(np.float32) * (q * scales)).sum(axis=1)
        bound = 0.5 * np.abs(q * scales).sum()
        assert np.all(np.abs(keys @ q - estimate) <= bound * 1.0001)


@pytest.mark.parametrize("effort,k", [(16, 10), (64, 10), (128, 50), (24, 60)])  # the last: k > effort
def test_at_slack_one_it_returns_the_exact_graphs_ids_with_fewer_exact_dot_products(data, graph, coded, effort, k):
    _, _, test = data
    reference = graph.search(test, k, effort)
    found = coded.search(test, k, effort)
    np.testing.assert_array_equal(found.ids, reference.ids)
    assert np.all(found.scanned <= reference.scanned)
    if effort >= 64:  # once the result list is full, estimates reject keys the exact graph scored
        assert found.scanned.sum() < reference.scanned.sum()
        assert coded.last_estimated.sum() > 0


def test_float16_keys_searched_in_place_match_the_exact_graph(data):
    keys, train, test = data
    half = keys.astype(np.float16)
    graph = build_graph_index(half, train, PARAMS)
    coded = CodedGraphIndex(graph, *code_graph(graph))
    np.testing.assert_array_equal(coded.search(test, 20, 64).ids, graph.search(test, 20, 64).ids)


def test_recall_against_exact_top_k_and_slack_below_one(data, graph):
    keys, _, test = data
    exact = exact_top(keys, test, 10)
    lossless = CodedGraphIndex(graph, *code_graph(graph), slack=1.0)
    tight = CodedGraphIndex(graph, *code_graph(graph), slack=0.25)
    full, fewer = lossless.search(test, 10, 64), tight.search(test, 10, 64)
    assert recall(full.ids, exact) >= 0.9
    assert fewer.scanned.sum() < full.scanned.sum()
    assert recall(fewer.ids, exact) >= 0.8


def test_built_saved_and_loaded_through_the_registry(data):
    keys, train, test = data
    index = build_layer_index("qgraph", keys, train, PARAMS)
    restored = load_layer_index("qgraph", index.to_arrays(), keys, PARAMS)
    np.testing.assert_array_equal(restored.search(test, 10, 48).ids, index.search(test, 10, 48).ids)
    assert set(index.to_arrays()) >= {"indptr", "indices", "entries", "codes", "scales"}


@pytest.mark.parametrize("method", ["retrieval", "qgraph"])
def test_heads_searched_on_two_threads_give_the_one_thread_results(data, method):
    keys, train, test = data
    one = build_layer_index(method, keys, train, PARAMS)
    two = load_layer_index(method, one.to_arrays(), keys, IndexParams(query_stride=2, threads=2))
    for step in range(test.shape[1]):
        decode = np.ascontiguousarray(test[:, step : step + 1])  # [H, 1, D]: one decode step
        a, b = one.search(decode, 10, 64), two.search(decode, 10, 64)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scanned, b.scanned)
