"""Vector capture for the index benchmarks: chunked prefill, layer choice, the reusable capture folder, RoPE stretch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.bench import gemma
from engine.bench.haystack import english_text, stdlib_docstrings
from engine.bench.index_suite import index_text
from engine.bench.vectors import capture_qk, prefill_vectors


def test_a_chunked_capture_of_some_layers_equals_a_one_shot_capture(tiny_loaded):
    ids = torch.randint(3, 390, (150,), generator=torch.Generator().manual_seed(0))
    whole = capture_qk(tiny_loaded.model, ids, chunk=1000)
    chunked = capture_qk(tiny_loaded.model, ids, chunk=32, layers=[1])
    assert sorted(whole) == [0, 1] and sorted(chunked) == [1]
    assert chunked[1].queries.shape == (4, 150, 16) and chunked[1].keys.shape == (2, 150, 16)
    np.testing.assert_allclose(chunked[1].queries, whole[1].queries, atol=1e-5)
    np.testing.assert_allclose(chunked[1].keys, whole[1].keys, atol=1e-5)
    assert not np.allclose(whole[0].keys, whole[1].keys)
    assert tiny_loaded.model.config._attn_implementation == "sdpa"  # restored


def test_a_stored_capture_is_reused_for_any_subset_of_its_layers(tiny_model_dir, tmp_path, monkeypatch):
    first = prefill_vectors(str(tiny_model_dir), index_text(), 120, [0, 1], cache_dir=tmp_path)
    [folder] = tmp_path.glob("capture-*")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["layers"] == [0, 1] and meta["tokens"] == 120 and meta["n_layers"] == 2
    assert not list(tmp_path.glob("*.tmp"))

    def no_prefill(*_args, **_kwargs):
        raise AssertionError("the stored capture should have been used")

    monkeypatch.setattr(gemma, "load_bench_model", no_prefill)
    again = prefill_vectors(str(tiny_model_dir), index_text(), 120, [1], cache_dir=tmp_path)
    assert sorted(again.layers) == [1] and again.prefill_s == first.prefill_s
    np.testing.assert_array_equal(again.layers[1].keys, first.layers[1].keys)
    np.testing.assert_array_equal(again.layers[1].queries, first.layers[1].queries)
    with pytest.raises(AssertionError, match="stored capture"):  # other tokens: another capture
        prefill_vectors(str(tiny_model_dir), index_text(), 100, [1], cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="stored capture"):  # other RoPE: another capture
        prefill_vectors(str(tiny_model_dir), index_text(), 120, [1], rope_scale=2.0, cache_dir=tmp_path)


def test_rope_scale_stretches_positions_linearly(tiny_model_dir):
    plain = gemma.load_bench_model(str(tiny_model_dir))
    stretched = gemma.load_bench_model(str(tiny_model_dir), rope_scale=4.0)
    assert stretched.config.max_position_embeddings == 4 * plain.config.max_position_embeddings
    torch.testing.assert_close(stretched.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 4)


def test_the_long_text_keeps_its_old_prefix_and_reaches_128k_tokens():
    docstrings = stdlib_docstrings()
    assert english_text().endswith(docstrings) and index_text().endswith(docstrings)
    assert len(docstrings.split()) > 60_000  # ~178K tokens of more English beyond the ~113K of pydoc's topics
