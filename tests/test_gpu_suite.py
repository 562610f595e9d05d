"""The memory/time suite of the GPU check runs end to end on a CPU with a tiny shape."""

import argparse
import json

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
