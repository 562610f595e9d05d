"""The free-running fidelity suite and the budget suite: their plumbing on the tiny model, the committed set, and
planting needles."""

import json

import pytest

from engine.bench.__main__ import main
from engine.bench.freerun_cases import CASES_FILE, load_cases, plant
from engine.bench.freerun_suite import Method, first_difference


def run_suite(tmp_path, *argv: str) -> dict:
    out = tmp_path / "rows.json"
    assert main([*argv, "--json-out", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_committed_set_loads_with_its_sources_licences_and_needles():
    documents = load_cases()
    assert len(documents) >= 10 and all(d.source and d.licence for d in documents)
    needles = [q for d in documents for q in d.questions if q.needle]
    assert len(needles) == 9 and {q.needle.split("@")[1] for q in needles} == {"10%", "50%", "90%"}
    for document in documents:
        for question in document.questions:
            if question.needle:
                assert all(fact in document.text for fact in question.expect)  # planted
    data = json.loads(CASES_FILE.read_text())
    for entry in data["documents"]:  # the files are the documents as copied (needles are planted at load time)
        text = (CASES_FILE.parent / entry["file"]).read_text()
        assert not any(needle["expect"][0] in text for needle in data["needles"].values())


def test_documents_named_load_in_the_order_named():
    assert [d.name for d in load_cases(names=["GPL-2", "apt-cache"])] == ["GPL-2", "apt-cache"]
    with pytest.raises(SystemExit, match="unknown documents"):
        load_cases(names=["apt-cache", "no-such-page"])


def test_a_needle_is_planted_as_its_own_paragraph_at_the_nearest_break():
    text = "alpha one\n\n  beta two\n\n  gamma three\n\n  delta four"
    planted = plant(text, "FACT.", 0.5)
    assert planted == "alpha one\n\n  beta two\n\n  FACT.\n\n  gamma three\n\n  delta four"
    assert plant(text, "FACT.", 0.0).startswith("alpha one\n\n  FACT.\n\n  beta two")


def test_methods_and_first_differences():
    assert Method.parse("retrieval@share=0.9") == Method("retrieval@share=0.9", "retrieval", 100, 0.9)
    assert Method.parse("exact@k=20@all").share == 1.0 and Method.parse("window").mode == "window"
    assert Method.parse("retrieval@share=0.9@cap=500").cap == 500 and Method.parse("retrieval").cap is None
    for bad in ("full", "retrieval@k=x", "retrieval@share=2", "magic"):
        with pytest.raises(SystemExit):
            Method.parse(bad)
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 5, 3], [1, 2, 3]) == 1 and first_difference([1, 2], [1, 2, 3]) == 2


@pytest.fixture
def tiny_cases(tmp_path):
    text = "\n\n".join(f"Paragraph {i}: the keepers recorded the weather at {i} o'clock." for i in range(40))
    (tmp_path / "doc.txt").write_text(text)
    cases = {"needles": {"code": {"fact": "The code is 4471.", "question": "What is the code?", "expect": ["4471"]}},
             "documents": [{"name": "tiny", "file": "doc.txt", "source": "written for this test", "licence": "-",
                            "needles": {"code": 50},
                            "questions": [{"question": "When was the weather recorded?", "expect": ["o'clock"]}]}]}
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    return path


def test_freerun_suite_on_the_tiny_model(tmp_path, tiny_model_dir, tiny_cases):
    """Every method answers every question; with every key in float32, retrieval answers exactly as full attention
    does, so the comparison itself is checked."""
    data = run_suite(tmp_path, "freerun", "--model", str(tiny_model_dir), "--cases", str(tiny_cases),
                     "--methods", "retrieval@k=8,retrieval@share=0.9,exact@all,window", "--n-sink", "8",
                     "--n-window", "32", "--kv-dtype", "float32", "--max-new-tokens", "6", "--threads", "1")
    cases = [row for row in data["rows"] if row["document"] == "tiny"]
    assert {(row["method"], row["needle"]) for row in cases} == {
        (m, n) for m in ("retrieval@k=8", "retrieval@share=0.9", "exact@all", "window") for n in (None, "code@50%")}
    assert all(row["identical"] and row["first_diff"] is None for row in cases if row["method"] == "exact@all")
    assert all(row["scanned"] == 1.0 for row in cases if row["method"] == "exact@all")
    assert all(row["keys"] >= 8 for row in cases if row["method"] == "retrieval@share=0.9")
    summary = {row["method"]: row for row in data["rows"] if row["document"] == "all"}
    assert set(summary) == {"full", "retrieval@k=8", "retrieval@share=0.9", "exact@all", "window"}
    assert summary["exact@all"]["identical_share"] == 1.0 and summary["full"]["cases"] == 2
    assert summary["exact@all"]["needles_lost"] == 0 and summary["window"]["needles_passed"].endswith("/1")
    assert any("written for this test" in note for note in data["notes"])


def test_freerun_compares_int8_linear_layers_with_the_float32_reference(tmp_path, tiny_model_dir, tiny_cases):
    """--compare-cpu-weights int8: a row per question for full attention on the int8 copy, compared with the float32
    model's full attention; comparing full with full gives identical answers (the comparison is the one above)."""
    args = ("--model", str(tiny_model_dir), "--cases", str(tiny_cases), "--methods", "exact@all", "--n-sink", "8",
            "--n-window", "32", "--kv-dtype", "float32", "--max-new-tokens", "6", "--threads", "1")
    data = run_suite(tmp_path, "freerun", *args, "--compare-cpu-weights", "int8")
    summary = {row["method"]: row for row in data["rows"] if row["document"] == "all"}
    assert summary["full@int8"]["cases"] == 2 and summary["full@int8"]["identical_share"] is not None
    assert any("linear layers: full" in note for note in data["notes"])
    same = run_suite(tmp_path / "same", "freerun", *args, "--compare-cpu-weights", "full")
    assert {row["method"]: row for row in same["rows"] if row["document"] == "all"}["full@full"]["identical_share"] == 1


def test_budget_suite_on_the_tiny_model(tmp_path, tiny_model_dir):
    data = run_suite(tmp_path, "budget", "--model", str(tiny_model_dir), "--tokens", "1000", "--test", "8",
                     "--methods", "topk=10,share=0.9,all", "--top-k", "10", "--repeats", "1", "--threads", "1",
                     "--vectors-cache", str(tmp_path / "vectors"))
    rows = {row["method"]: row for row in data["rows"]}
    assert rows["all"]["left_out_max"] == 0 and rows["all"]["scanned_fraction"] == 1.0
    assert rows["topk=10"]["keys_retrieved"] == 10 and rows["topk=10"]["left_out_mean"] > 0
    assert rows["share=0.9"]["keys_retrieved"] >= 10 and 0 <= rows["share=0.9"]["reached"] <= 1
    assert rows["share=0.9"]["left_out_mean"] <= rows["topk=10"]["left_out_mean"]
    assert rows["topk=10"]["step_ratio"] == 1.0
