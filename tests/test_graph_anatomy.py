"""The graph-anatomy measures (engine.bench.graph_anatomy) on graphs small enough to check by hand."""

from __future__ import annotations

import numpy as np

from engine.bench.graph_anatomy import answer_components, answer_cover, budget_for_recall, oracle_search_trace


def csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Adjacency lists -> (indptr [N+1] int64, indices int32)."""
    indptr = np.cumsum([0] + [len(x) for x in lists]).astype(np.int64)
    return indptr, np.array([v for x in lists for v in x], dtype=np.int32)


# A path 0 -> 1 -> 2 -> 3 -> 4 -> 5 with one back edge 3 -> 2; the answer is {0, 1, 4, 5}.
PATH = csr([[1], [2], [3], [4, 2], [5], []])
ANSWER = np.array([5, 4, 1, 0])


def test_components_join_answer_keys_linked_either_way():
    assert answer_components(*PATH, ANSWER) == 2  # {0, 1} and {4, 5}: 2 and 3 lie outside the answer
    assert answer_components(*PATH, np.array([0, 1, 2, 3, 4, 5])) == 1
    assert answer_components(*PATH, np.array([0, 2, 4])) == 3


def test_cover_is_the_answer_and_what_it_links_to():
    assert answer_cover(*PATH, ANSWER) == 5  # 0, 1, 4, 5 and 2 (from 1)
    assert answer_cover(*PATH, np.array([3])) == 3  # 3 and its links 4, 2


def test_the_told_search_expands_answer_keys_first_and_crosses_outside_only_when_stuck():
    scores = np.array([1.0, 0.9, 0.1, 0.2, 0.8, 0.7], dtype=np.float32)
    found = oracle_search_trace(scores, *PATH, np.array([0, -1]), ANSWER)
    # scored in order: 0 (entry), 1, 2 (from 1; outside), then stuck inside -> expand 2: 3, then 3: 4, then 4: 5
    assert found.tolist() == [1, 2, 2, 2, 3, 4]
    # stranded: from 5 nothing is reachable, so it stops with one answer key found
    assert oracle_search_trace(scores, *PATH, np.array([5]), ANSWER).tolist() == [1]


def test_budget_is_where_the_mean_recall_first_reaches_the_target():
    traces = [np.array([1, 2, 2, 2, 3, 4]), np.array([1, 2, 3, 4])]  # answers of k = 4 keys
    assert budget_for_recall(traces, 4, 0.5) == 2  # mean found after 2 keys: (2 + 2) / 2 = 2 of 4
    assert budget_for_recall(traces, 4, 0.75) == 4  # after 3 keys: (2 + 3) / 2 < 3; after 4: (2 + 4) / 2 = 3
    assert budget_for_recall(traces, 4, 1.0) == 6
    assert budget_for_recall([np.array([1])], 4, 0.5) is None


def test_index_suite_reports_the_anatomy_of_the_graph(tmp_path, tiny_model_dir):
    from tests.test_bench_suites import run_suite

    data = run_suite(tmp_path, "index", "--model", str(tiny_model_dir), "--tokens", "1000", "--layers", "1",
                     "--methods", "retrieval,exact", "--torch-threads", "1", "--anatomy", "--degree", "8")
    summary = {row["method"]: row for row in data["rows"] if row["param"].startswith("recall>=")}
    graph = summary["retrieval"]
    assert graph["answer_components"] >= 1
    assert 100 / 360 <= graph["answer_cover_fraction"] <= 1  # at least the top-100 of the 360 keys
    assert 0 < graph["oracle_fraction"] <= 1
    assert "answer_components" not in summary["exact"]
    assert any("degree 8" in note for note in data["notes"])
