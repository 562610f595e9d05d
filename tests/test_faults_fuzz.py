"""The fault matrix, fuzzed: a seeded run of 600 mutated PDFs and texts (engine.bench.fuzz_suite) through
read_document ends every one in a Document or a DocumentError, and MuPDF prints nothing on stdout. The long run is
`python -m engine.bench fuzz --inputs 10000` (docs/reliability.md)."""

from __future__ import annotations

from collections import Counter

from engine.bench.fuzz_suite import run_fuzz


def test_600_mutated_documents_end_only_in_documents_or_document_errors(tmp_path, capfd):
    results = run_fuzz(600, seed=0, folder=tmp_path)
    failures = [f"input {r.number} (from {r.seed_name}): {r.detail}" for r in results if r.outcome == "failed"]
    assert failures == []
    outcomes = Counter(r.outcome for r in results)
    assert outcomes["accepted"] and outcomes["warned"] and outcomes["refused"]  # the mutations reach every path
    assert capfd.readouterr().out == ""
