"""`python -m engine ask` end to end in a subprocess, on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def engine(*args, env_extra=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_ask_json_prints_the_answer_and_stats(tiny_model_dir, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("The light was first lit in 1865 by Anders Brekke.\n")
    result = engine("ask", str(doc), "When was it lit?", "--model", str(tiny_model_dir), "--json",
                    "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for key in ("answer", "prompt_tokens", "prefill_s", "ttft_s", "decode_tokens_per_s", "attention"):
        assert key in out
    assert out["new_tokens"] <= 5 and out["prompt_tokens"] > 20
    assert "prefill:" in result.stderr  # progress goes to stderr
    assert 0 < out["citation_baseline_s"] <= out["ttft_s"] and "citation baseline:" in result.stderr


def test_streams_answer_to_stdout_without_json(tiny_model_dir, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nSome text.\n")
    result = engine("ask", str(doc), "What?", "--model", str(tiny_model_dir), "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert "prompt tokens" in result.stderr and "decode" in result.stderr


def test_too_long_document_is_refused_with_counts_and_no_traceback(tiny_model_dir, tmp_path):
    doc = tmp_path / "long.txt"
    doc.write_text("the keepers recorded the weather three times a day. " * 600)
    result = engine("ask", str(doc), "Why?", "--model", str(tiny_model_dir))
    assert result.returncode == 2
    assert "at most 2,048" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bad_document_fails_before_loading_a_model(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"\xe9t\xe9 broken")  # Latin-1 (a file starting with FF FE is UTF-16)
    result = engine("ask", str(doc), "Why?", "--model", str(tmp_path / "missing-model"))
    assert result.returncode == 2
    assert "not valid UTF-8" in result.stderr and "Traceback" not in result.stderr
