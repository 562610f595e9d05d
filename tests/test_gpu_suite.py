"""The memory/time suite of the GPU check runs end to end on a CPU with a tiny shape."""

import argparse
import json

import pytest
import torch

from engine.bench import gpu_suite
from engine.bench.report import Report


def test_memory_suite_compares_full_attention_and_retrieval_at_each_length(tmp_path):
    parser = argparse.ArgumentParser()
    gpu_suite.add_arguments(parser)
    parser.add_argument("--json-out")
    out = tmp_path / "memory.json"
    args = parser.parse_args(["--shape", "tiny", "--tokens", "1800,2000", "--chunk", "256", "--device", "cpu",
                              "--dtype", "float32", "--decode-steps", "3", "--json-out", str(out)])
    report = Report("memory")
    gpu_suite.run(args, report)  # > 1,640 tokens: the graph searches (it scans every key below 10 × its queue)
    assert [(r["method"], r["tokens"]) for r in report.rows] == [
        ("full", 1800), ("retrieval", 1800), ("full", 2000), ("retrieval", 2000)]
    for row in report.rows:
        assert row["step_ms"] > 0 and row["prefill_s"] > 0 and "error" not in row
    full, retrieval = report.rows[:2]
    assert full["build_s"] == 0 and full["scanned_fraction"] == 1.0 and full["step_vs_full"] == 1.0
    assert retrieval["build_s"] > 0 and 0 < retrieval["scanned_fraction"] < 1
    assert retrieval["step_vs_full"] == round(retrieval["step_ms"] / full["step_ms"], 2)
    # the JSON is rewritten after each length, so a run cut off by a time limit keeps the lengths it finished
    assert [row["tokens"] for row in json.loads(out.read_text())["rows"]] == [1800, 1800, 2000, 2000]


def test_memory_suite_times_both_prefill_orders(tmp_path):
    """retrieval prefills layer by layer, retrieval@chunk chunk by chunk: both rows time the prefill, the builds and
    what of the builds came after the prefill (all of it here: a CPU host builds after the prefill)."""
    parser = argparse.ArgumentParser()
    gpu_suite.add_arguments(parser)
    args = parser.parse_args(["--shape", "tiny", "--tokens", "1800", "--chunk", "256", "--device", "cpu",
                              "--dtype", "float32", "--decode-steps", "2", "--methods", "retrieval,retrieval@chunk"])
    report = Report("memory")
    gpu_suite.run(args, report)
    assert [r["method"] for r in report.rows] == ["retrieval", "retrieval@chunk"]
    for row in report.rows:
        assert row["build_s"] > 0 and row["build_wait_s"] == row["build_s"]
        assert row["ready_s"] >= row["prefill_s"] > 0 and 0 < row["scanned_fraction"] < 1


@pytest.mark.slow  # bitsandbytes' 4-bit matmuls are slow on a CPU: about half a minute
def test_memory_suite_runs_quantized_weights_under_a_card_cap(tmp_path):
    """The GPU check's 4-bit setups on a CPU: the model's linear layers quantized in place by bitsandbytes, the
    weights held as engine.sizing counts them, and retrieval against full attention in each setup (the cap is only
    recorded on a CPU)."""
    pytest.importorskip("bitsandbytes")
    parser = argparse.ArgumentParser()
    gpu_suite.add_arguments(parser)
    args = parser.parse_args(["--shape", "tiny", "--tokens", "800", "--chunk", "256", "--device", "cpu",
                              "--dtype", "float32", "--decode-steps", "2", "--setups", "full,4bit@8"])
    report = Report("memory")
    gpu_suite.run(args, report)
    assert [(r["weights"], r["cap_gib"] > 0, r["method"]) for r in report.rows] == [
        ("full", False, "full"), ("full", False, "retrieval"), ("4bit", True, "full"), ("4bit", True, "retrieval")]
    full, quantized = report.rows[0], report.rows[2]
    assert quantized["weights_gib"] < full["weights_gib"]
    for row in report.rows:
        assert abs(row["weights_gib"] - row["weights_gib_computed"]) <= 0.02 * row["weights_gib"] + 1e-4
        assert "error" not in row and row["step_ms"] > 0
    assert report.rows[3]["cap_gib"] == round((8 * 2**30 - 512 * 2**20) / 2**30, 2)


def test_setups_are_checked():
    assert gpu_suite.parse_setups("full,4bit@12,4bit@8") == [("full", 0), ("4bit", 12), ("4bit", 8)]
    with pytest.raises(ValueError, match="full ones first"):
        gpu_suite.parse_setups("4bit,full")
    with pytest.raises(ValueError, match="WEIGHTS"):
        gpu_suite.parse_setups("3bit@8")


@pytest.mark.slow
def test_quantized_linears_compute_like_loading_with_bitsandbytes_config(tiny_model_dir):
    """quantize_linears (the bench's in-place 4-bit) quantizes as loading with engine.quantize does: their logits
    differ by a twentieth of what 4-bit changes (on a CPU, bitsandbytes keeps a loaded model's scales in bfloat16)."""
    pytest.importorskip("bitsandbytes")
    from engine.model import load_model

    reference = load_model(str(tiny_model_dir), device="cpu", dtype="float32", cpu_weights="full").model
    plain = load_model(str(tiny_model_dir), device="cpu", dtype="float32", cpu_weights="full").model
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32", weights="4bit").model
    gpu_suite.quantize_linears(plain, "4bit", torch.float32)
    ids = torch.randint(3, 390, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, bench, load = reference(ids).logits, plain(ids).logits, loaded(ids).logits
    assert 0 < (bench - load).abs().max() <= (load - want).abs().max() / 20
