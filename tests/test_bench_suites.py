"""Smoke tests of the decode, index, needle, fidelity and chat benchmark suites (tiny sizes; the real model only in
slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.bench.__main__ import main
from engine.bench.decode_suite import N_SINK, N_TEST, Segment, rope_shift, tile_plan, tile_vectors
from engine.bench.fidelity_suite import compare, prefilled_document, teacher_forced_logprobs, with_settings
from engine.cache import RetrievalSettings


def run_suite(tmp_path, *argv: str) -> dict:
    out = tmp_path / "rows.json"
    assert main([*argv, "--json-out", str(out)]) == 0
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- decode


def test_decode_suite_synthetic_rows(tmp_path, capsys):
    data = run_suite(tmp_path, "decode", "--vectors", "synthetic", "--tokens", "2048", "--repeats", "1",
                     "--steps", "2", "--heads", "4", "--kv-heads", "2", "--dim", "32", "--threads", "1")
    rows = {row["method"]: row for row in data["rows"]}
    assert list(rows) == ["full", "flat", "ivf", "hnsw", "exact", "retrieval"]
    for row in rows.values():
        assert row["tokens"] == 2048 and row["n_offloaded"] == 2048 - 640
        assert 0 <= row["recall_at_100"] <= 1 and row["step_ms"] > 0
        assert {"build_s", "scanned_fraction", "speedup_vs_full", "speedup_vs_flat", "speedup_vs_ivf"} <= set(row)
    assert rows["full"]["speedup_vs_full"] == 1.0 and rows["exact"]["recall_at_100"] == 1.0
    assert rows["exact"]["attn_err"] == pytest.approx(rows["flat"]["attn_err"], abs=1e-5)
    assert rows["ivf"]["param"].startswith("nprobe=") and rows["retrieval"]["param"].startswith("queue=")
    assert "speedup_vs_full" in capsys.readouterr().out


def test_decode_suite_on_one_untiled_prefill(tmp_path, tiny_model_dir):
    data = run_suite(tmp_path, "decode", "--vectors", "prefill", "--model", str(tiny_model_dir), "--layer", "1",
                     "--tokens", "900,1100", "--methods", "full,exact,retrieval", "--repeats", "1", "--steps", "2",
                     "--threads", "1", "--vectors-cache", str(tmp_path / "vectors"))
    rows = data["rows"]
    assert [(row["method"], row["tokens"]) for row in rows] == [
        (method, n) for n in (900, 1100) for method in ("full", "exact", "retrieval")]
    assert all(row["recall_at_100"] == 1.0 for row in rows if row["method"] == "exact")
    assert any("one prefill of" in note for note in data["notes"])
    assert len(list((tmp_path / "vectors").glob("capture-*/k1.npy"))) == 1  # one capture of the longest N


def test_index_suite_on_the_tiny_model(tmp_path, tiny_model_dir):
    data = run_suite(tmp_path, "index", "--model", str(tiny_model_dir), "--tokens", "1000", "--layers", "0,1",
                     "--methods", "retrieval,ivf,exact", "--torch-threads", "1")
    summary = {row["method"]: row for row in data["rows"] if row["param"].startswith("recall>=")}
    assert sorted(summary) == ["exact", "ivf", "retrieval"]
    assert summary["exact"]["recall_at_100"] == 1.0 and summary["exact"]["scanned_fraction"] == 1.0
    assert all(row["tokens"] == 1000 and row["n_keys"] == 1000 - 640 for row in data["rows"])
    graph = [row for row in data["rows"] if row["method"] == "retrieval" and row["param"].startswith("queue=")]
    assert [row["recall_at_100"] for row in graph] == sorted(row["recall_at_100"] for row in graph)


def _rope(x: torch.Tensor, pos: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Llama's rotary embedding of x [..., D] at position pos (rotate_half layout)."""
    from transformers.models.llama.modeling_llama import rotate_half

    angle = torch.cat([pos * inv_freq, pos * inv_freq]).double()
    return (x.double() * angle.cos() + rotate_half(x.double()) * angle.sin()).float()


def test_rope_shift_moves_a_vector_to_a_later_position():
    dim = 16
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    x = torch.randn(3, dim)
    at_5, at_1005 = _rope(x, 5, inv_freq), _rope(x, 1005, inv_freq)
    shifted = rope_shift(at_5.numpy(), 1000, inv_freq.numpy())
    np.testing.assert_allclose(shifted, at_1005.numpy(), atol=1e-4)


def test_tile_vectors_keeps_real_vectors_and_places_the_tail_last():
    rng = np.random.default_rng(0)
    seg_len, dim = 1000, 8
    segments = [Segment(rng.standard_normal((4, seg_len, dim), dtype=np.float32),
                        rng.standard_normal((2, seg_len, dim), dtype=np.float32)) for _ in range(2)]
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, dim, 2) / dim))
    keys, train, test = tile_vectors(segments, 800, inv_freq, 100)  # within one segment: untouched
    np.testing.assert_array_equal(keys, segments[0].keys[:, :800])
    np.testing.assert_array_equal(test, segments[0].queries[:, 800 - N_TEST : 800])
    plan = tile_plan(3000, seg_len, 2)
    assert plan[0].start == 0 and all(p.start == N_SINK and p.end == seg_len for p in plan[1:])
    assert plan[-1].segment == 0 and N_SINK < plan[0].end <= seg_len
    assert sum(p.end - p.start for p in plan) == 3000
    keys, train, test = tile_vectors(segments, 3000, inv_freq, 100)
    assert keys.shape == (2, 3000, dim) and test.shape == (4, N_TEST, dim) and 50 <= train.shape[1] <= 100
    last = plan[-1]  # the test queries are the last tile's real queries, moved by the same shift as its keys
    shift = last.at - last.start
    np.testing.assert_allclose(test, rope_shift(segments[last.segment].queries[:, -N_TEST:], shift, inv_freq),
                               atol=1e-6)
    scores = np.einsum("d,nd->n", test[0, -1], keys[0, -200:])  # relative positions are kept in the tail
    real = np.einsum("d,nd->n", segments[last.segment].queries[0, -1], segments[last.segment].keys[0, -200:])
    np.testing.assert_allclose(scores, real, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- fidelity


def test_compare_identical_and_different_distributions():
    a = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]]), dim=-1)
    agree, kl = compare(a, a)
    assert agree.all() and torch.allclose(kl, torch.zeros(2, dtype=torch.float64))
    b = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 1.0]]), dim=-1)
    agree, kl = compare(a, b)
    assert agree.tolist() == [False, True] and kl[0] > 0.1 and kl[1] == pytest.approx(0.0, abs=1e-9)


def test_copied_prefilled_cache_decodes_like_a_fresh_one(tiny_loaded):
    model = tiny_loaded.model
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, 390, (200,), generator=gen).tolist()
    question, answer = [5, 6, 7, 8], [9, 10, 11]
    exact = RetrievalSettings(method="exact", n_sink=8, n_window=16, top_k=20)
    try:
        base = prefilled_document(model, prefix, RetrievalSettings(method="window", n_sink=8, n_window=16), 64,
                                  torch.device("cpu"))
        copied = teacher_forced_logprobs(model, with_settings(base, exact), question, answer, 64)
        fresh = teacher_forced_logprobs(model, prefilled_document(model, prefix, exact, 64, torch.device("cpu")),
                                        question, answer, 64)
        window = teacher_forced_logprobs(model, with_settings(base, base.settings), question, answer, 64)
    finally:
        model.set_attn_implementation("sdpa")
    assert copied.shape == (3, model.config.vocab_size)
    torch.testing.assert_close(copied, fresh)
    assert not torch.allclose(copied, window)  # the copy really took the other settings
    assert not base.indexed


def test_fidelity_suite_on_the_tiny_model(tmp_path, tiny_model_dir):
    data = run_suite(tmp_path, "fidelity", "--model", str(tiny_model_dir), "--tokens", "300", "--cases",
                     "needle,haystack", "--needle-depths", "50", "--questions", "1", "--methods", "exact,window",
                     "--n-sink", "8", "--n-window", "16", "--max-new-tokens", "4", "--threads", "1")
    methods = {row["method"] for row in data["rows"]}
    assert methods <= {"exact", "window"}
    for row in data["rows"]:
        assert 0 <= row["top1_agreement"] <= 1 and row["kl"] >= 0 and row["compared"] >= 1
    summary = [row for row in data["rows"] if row["param"] == "all cases"]
    assert len(summary) == len(methods)


# ----------------------------------------------------------------------------- needle


def test_chat_suite_on_the_tiny_model(tmp_path, tiny_model_dir):
    data = run_suite(tmp_path, "chat", "--model", str(tiny_model_dir), "--tokens", "300", "--runs", "1",
                     "--max-new-tokens", "3", "--threads", "1")
    rows = {row["step"]: row for row in data["rows"]}
    assert list(rows) == ["first_open", "follow_up_2", "follow_up_3", "stored_first", "reopened_follow_up",
                          "scratch_history"]
    document = rows["first_open"]["tokens"]
    assert rows["first_open"]["prefill_tokens"] == rows["first_open"]["prompt_tokens"] > document
    stored = rows["stored_first"]
    assert stored["prefill_tokens"] == stored["prompt_tokens"] - document  # the question alone
    for step in ("follow_up_2", "follow_up_3"):  # the new question alone, not the earlier turns
        assert rows[step]["prefill_tokens"] < rows[step]["prompt_tokens"] - document - stored["prefill_tokens"]
    last = rows["reopened_follow_up"]
    assert last["prefill_tokens"] == last["prompt_tokens"] - document  # its turns again, never the document
    assert rows["scratch_history"]["prompt_tokens"] == last["prompt_tokens"] == rows["scratch_history"][
        "prefill_tokens"]
    assert rows["follow_up_3"]["static_tokens"] > rows["follow_up_2"]["static_tokens"]  # turns stay in the static set


def test_needle_suite_on_the_tiny_model(tmp_path, tiny_model_dir):
    data = run_suite(tmp_path, "needle", "--model", str(tiny_model_dir), "--tokens", "300", "--depths", "50",
                     "--methods", "full,window,exact", "--n-sink", "8", "--n-window", "16",
                     "--max-new-tokens", "3", "--threads", "1")
    assert [row["method"] for row in data["rows"]] == ["full", "window", "exact"]
    for row in data["rows"]:
        assert row["depth"] == 50 and isinstance(row["passed"], bool) and row["prefill_s"] > 0
    assert data["rows"][2]["param"] == "top_k=100,share=0.9" and data["rows"][1]["param"] == "sink=8,window=16"
    assert any(note.startswith("full: ") for note in data["notes"])


def test_needle_suite_ranks_the_sources_before_and_after_the_citation_baseline(tmp_path, tiny_model_dir):
    data = run_suite(tmp_path, "needle", "--model", str(tiny_model_dir), "--tokens", "300", "--depths", "10,50",
                     "--methods", "full,exact", "--n-sink", "8", "--n-window", "16", "--max-new-tokens", "3",
                     "--threads", "1", "--sources")
    cases = [row for row in data["rows"] if row["depth"] != "all"]
    assert len(cases) == 4 and all(row["baseline_s"] > 0 for row in cases)
    for row in cases:
        for when in ("src_before", "src_after"):
            assert row[when] is None or 1 <= row[when] <= 5
    summary = {(row["method"], row["over"]): row for row in data["rows"] if row["depth"] == "all"}
    assert set(summary) == {(m, over) for m in ("full", "exact") for over in ("correct", "all")}
    for (method, over), row in summary.items():
        chosen = [r for r in cases if r["method"] == method and (over == "all" or r["passed"])]
        assert row["answers"] == len(chosen)
        hits = sum(r["src_after"] is not None and r["src_after"] <= 3 for r in chosen)
        assert row["top3_after"] == (hits / len(chosen) if chosen else None)
        assert row["top1_before"] is None or row["top1_before"] <= row["top3_before"]


# ----------------------------------------------------------------------------- profile


def test_decode_profile_groups_a_token_and_says_what_retrieval_searched(tmp_path, tiny_model_dir):
    document = tmp_path / "doc.txt"
    document.write_text(" ".join(f"Line {n} of the keeper's log notes the weather." for n in range(100)))
    data = run_suite(tmp_path, "profile", "--part", "decode", "--model", str(tiny_model_dir), "--document",
                     str(document), "--methods", "full,retrieval", "--max-new-tokens", "6", "--compare-threads", "",
                     "--rope-scale", "2", "--top", "0", "--threads", "1", "--compare-shares", "1,1:150,0",
                     "--repeats", "1")
    rows = {(row["method"], row["group"]): row for row in data["rows"]}
    assert {group for _, group in rows} >= {"weights' matmuls", "attention", "index search", "python around them"}
    assert rows[("full", "attention")]["prompt_tokens"] > 2048  # past the tiny model's 2,048 positions: stretched
    retrieval = rows[("retrieval", "index search")]
    assert retrieval["ms_per_token"] > 0 and 0 < retrieval["scanned_fraction"] <= 1
    assert retrieval["retrieved_per_search"] >= 1 and "retrieved_per_search" not in rows[("full", "attention")]
    assert sum(row["share"] for (method, _), row in rows.items()
               if method == "retrieval" and "share" in row) == pytest.approx(1, abs=0.01)
    every_key = rows[("retrieval", "decode, attention share 1")]
    fixed = rows[("retrieval", "decode, attention share 0")]
    capped = rows[("retrieval", "decode, attention share 1:150")]
    assert fixed["retrieved_per_search"] <= 100 < every_key["retrieved_per_search"]  # top_k 100 against every key
    assert 100 <= capped["retrieved_per_search"] <= 150 < every_key["retrieved_per_search"]
    assert every_key["scanned_fraction"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- peers


def _fake_answer(spec: dict, work) -> dict:
    return {"prompt_tokens": len(spec["ids"]), "ttft_s": 1.0, "new_tokens": 3, "decode_tokens_per_s": 10.0,
            "wall_s": 1.2, "answer": "seven", "token_ids": [5, 6, 7], "peak_rss_gib": 0.5}


def test_a_peer_that_crashes_is_reported_with_its_signal_and_the_others_still_give_rows(tmp_path, monkeypatch):
    """The llama.cpp child dying on an illegal instruction (a native build using AMX where the machine cannot run it)
    must not cost the Folio rows already measured, and the note must name the signal and the fix."""
    from engine.bench import peers_suite

    specs = []

    def run_child(spec: dict, work) -> dict:
        specs.append(spec)
        if spec["tool"] == peers_suite.LLAMA:
            raise peers_suite.ChildFailed(peers_suite.child_failure_message(spec["tool"], -4, "llama_context: ...\n"))
        return _fake_answer(spec, work)

    monkeypatch.setattr(peers_suite, "have_llama_cpp", lambda: True)
    monkeypatch.setattr(peers_suite, "default_gguf", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(peers_suite, "trained_positions", lambda: 8192)
    monkeypatch.setattr(peers_suite, "document_prompt", lambda tokens, long: ("text", "q?", list(range(tokens)), 90))
    monkeypatch.setattr(peers_suite, "_run_child", run_child)
    data = run_suite(tmp_path, "peers", "--tokens", "100,200", "--folio-modes", "full", "--cpu-weights", "int8",
                     "--runs", "2", "--attention-share", "0")
    assert {spec["attention_share"] for spec in specs} == {0.0}
    assert [(row["tool"], row["prompt_tokens"], row["runs"]) for row in data["rows"]] == [
        ("folio full (int8)", 100, 2), ("folio full (int8)", 200, 2)]
    assert all("decode_vs_llama" not in row for row in data["rows"])
    failures = [note for note in data["notes"] if "llama.cpp" in note and "SIGILL" in note]
    assert len(failures) == 2  # once per document: it is tried again on the next one
    assert "GGML_NATIVE=OFF" in failures[0] and "llama_context: ..." in failures[0]


def test_a_peer_that_exits_with_an_error_is_named_with_its_exit_status():
    from engine.bench.peers_suite import child_failure_message

    message = child_failure_message("folio retrieval (int8)", 1, "Traceback ...\nMemoryError\n")
    assert "folio retrieval (int8)" in message and "exit status 1" in message and "MemoryError" in message
    assert "GGML_NATIVE" not in message


# ----------------------------------------------------------------------------- real model (slow)


@pytest.mark.slow
def test_decode_suite_on_real_vectors(tmp_path):
    data = run_suite(tmp_path, "decode", "--tokens", "4096", "--methods", "full,exact,retrieval",
                     "--repeats", "1", "--steps", "8")
    rows = {row["method"]: row for row in data["rows"]}
    assert rows["exact"]["recall_at_100"] == 1.0 and rows["retrieval"]["recall_at_100"] >= 0.95


@pytest.mark.slow
def test_needle_suite_full_and_exact_pass_at_half_depth(tmp_path):
    data = run_suite(tmp_path, "needle", "--depths", "50", "--methods", "full,exact", "--max-new-tokens", "16")
    assert all(row["passed"] for row in data["rows"])
