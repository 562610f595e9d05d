"""The memory/time suite of the GPU check runs end to end on a CPU with a tiny shape."""

import argparse

from engine.bench import gpu_suite
from engine.bench.report import Report


def test_memory_suite_reports_prefill_build_and_decode():
    parser = argparse.ArgumentParser()
    gpu_suite.add_arguments(parser)
    args = parser.parse_args(["--shape", "tiny", "--tokens", "1500", "--chunk", "256", "--device", "cpu",
                              "--dtype", "float32", "--decode-steps", "3"])
    report = Report("memory")
    gpu_suite.run(args, report)
    (row,) = report.rows
    assert row["tokens"] == 1500 and row["step_ms"] > 0 and row["prefill_s"] > 0 and row["build_s"] > 0
    assert 0 < row["scanned_fraction"] < 1
