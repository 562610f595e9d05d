"""The library across processes: reopen in a new process, kill -9 mid-write, two processes at once, CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.store import Store

ROOT = Path(__file__).resolve().parents[1]
ASK_OPTIONS = ["--attention", "exact", "--n-sink", "8", "--n-window", "32", "--max-new-tokens", "6", "--json"]

# Runs the CLI with the cache writer slowed down: after two files it leaves a half-written temporary
# file, says WRITING on stdout and sleeps, so the test can kill -9 it in the middle of a cache write.
SLOW_WRITER = textwrap.dedent("""
    import sys, time
    import engine.persist as persist
    real, calls = persist.write_array, [0]
    def write(folder, name, array):
        calls[0] += 1
        if calls[0] == 3:
            (folder / (name + ".tmp")).write_bytes(b"half a file")
            print("WRITING", flush=True)
            time.sleep(120)
        return real(folder, name, array)
    persist.write_array = write
    from engine.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def engine(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def ask_json(doc, model_dir, question="When was it lit?"):
    """Ask in a NEW process."""
    return json.loads(engine("ask", str(doc), question, "--model", str(model_dir), *ASK_OPTIONS).stdout)


def in_process(capsys, *args):
    """Run the CLI in this process (cheaper than a subprocess where a new process proves nothing)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def ask_here(capsys, doc, model_dir, *extra, question="When?"):
    code, out, err = in_process(capsys, "ask", doc, question, "--model", model_dir, *ASK_OPTIONS, *extra)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def doc(tmp_path):
    path = tmp_path / "light.txt"
    path.write_text("The light was first lit in 1865 by Anders Brekke. " * 30)
    return path


def test_reopen_in_a_new_process_skips_the_prefill_and_answers_the_same(tiny_model_dir, doc, capsys):
    first = ask_here(capsys, doc, tiny_model_dir, question="When was it lit?")  # this process fills the store
    second = ask_json(doc, tiny_model_dir)  # a new process reopens it
    assert first["cached"] is False and second["cached"] is True
    assert second["answer"] == first["answer"]
    assert first["prefill_tokens"] == first["prompt_tokens"]
    assert second["prefill_tokens"] < 30  # only the question (and the template's turn) is prefilled
    assert second["cache_bytes"] == first["cache_bytes"] > 0
    no_cache = ask_here(capsys, doc, tiny_model_dir, "--no-cache", question="When was it lit?")
    assert no_cache["cached"] is False and no_cache["cache_bytes"] is None
    assert no_cache["answer"] == first["answer"]


def test_kill_9_in_the_middle_of_a_cache_write_leaves_a_library_that_opens_and_rebuilds(tiny_model_dir, doc,
                                                                                        capsys):
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, "ask", str(doc), "When?", "--model", str(tiny_model_dir), *ASK_OPTIONS],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "WRITING"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    raw = Store(sweep=False)
    (row,) = list(raw.db["caches"].rows)
    assert row["status"] == "writing" and list(raw.root.rglob("*.tmp"))  # really died mid-write
    raw.close()

    store = Store()  # opening sweeps the debris of the dead writer
    assert store.notices == ["library: removed an unfinished cache write"]
    assert store.db["caches"].count == 0 and not any((store.root / "caches").iterdir())
    assert [d.title for d in store.list_documents()] == ["light"]
    assert ask_here(capsys, doc, tiny_model_dir)["cached"] is False  # rebuilt
    assert ask_here(capsys, doc, tiny_model_dir)["cached"] is True


def test_two_processes_opening_the_store_at_once(tiny_model_dir, doc, capsys):
    command = [sys.executable, "-m", "engine", "ask", str(doc), "When?", "--model", str(tiny_model_dir), *ASK_OPTIONS]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = [(p.communicate(timeout=300), p.returncode) for p in processes]
    for (_, stderr), code in results:
        assert code == 0, stderr
    answers = [json.loads(stdout)["answer"] for (stdout, _), _ in results]
    assert answers[0] == answers[1]
    store = Store()
    assert [row["status"] for row in store.db["caches"].rows] == ["ready"]
    assert store.db["documents"].count == 1
    assert ask_here(capsys, doc, tiny_model_dir)["cached"] is True


def test_library_cli_add_list_remove_path(tiny_model_dir, doc, tmp_path, capsys):
    assert engine("library", "path").stdout.strip() == os.environ["FOLIO_DATA_DIR"]
    code, out, err = in_process(capsys, "library", "add", doc, "--model", tiny_model_dir, "--attention", "exact",
                                "--n-sink", "8", "--n-window", "32")
    assert code == 0 and "added document 1" in out and "cached" in out, err
    listing = json.loads(engine("library", "list", "--json").stdout)
    (entry,) = listing["documents"]
    assert entry["title"] == "light" and entry["cached"] and entry["cache_bytes"] > 0 and entry["tokens"] > 100
    assert "light" in engine("library", "list").stdout
    assert ask_here(capsys, "@1", tiny_model_dir)["cached"] is True  # ask a library document by id

    long_doc = tmp_path / "long.txt"
    long_doc.write_text("the keepers recorded the weather three times a day. " * 600)
    code, out, err = in_process(capsys, "library", "add", long_doc, "--model", tiny_model_dir)
    assert code == 2 and "at most 2,048" in err and "Traceback" not in err
    assert len(json.loads(engine("library", "list", "--json").stdout)["documents"]) == 1  # nothing stored

    assert "removed document 1" in engine("library", "remove", "1").stdout
    assert json.loads(engine("library", "list", "--json").stdout)["documents"] == []
    assert not any((Path(os.environ["FOLIO_DATA_DIR"]) / "caches").iterdir())
    assert engine("library", "remove", "1", check=False).returncode == 2


@pytest.mark.slow
def test_default_model_round_trip_in_new_processes(tmp_path):
    from engine.bench.haystack import DEFAULT_NEEDLE, needle_document
    from engine.model import load_model

    tokenizer = load_model("default").tokenizer
    doc = tmp_path / "haystack.txt"
    doc.write_text(needle_document(tokenizer, 1500, depth=0.5))
    options = ["--attention", "retrieval", "--max-new-tokens", "24", "--json"]
    first = json.loads(engine("ask", str(doc), DEFAULT_NEEDLE.question, *options).stdout)
    second = json.loads(engine("ask", str(doc), DEFAULT_NEEDLE.question, *options).stdout)
    assert not first["cached"] and second["cached"]
    assert second["answer"] == first["answer"]
    # The reopen prefilled only the question (the document came from the library); its speed is the reopen suite's.
    assert first["prefill_tokens"] == first["prompt_tokens"]
    assert second["prefill_tokens"] < first["prompt_tokens"] / 10


def test_the_disk_estimate_before_a_prefill_bounds_the_cache_it_then_stores(tiny_model_dir, doc, capsys):
    """The app checks free disk with estimate_fit before a prefill: it must not underestimate what the
    retrieval cache then takes, nor overstate it so much that documents that fit are refused."""
    from engine.sizing import ModelShape, estimate_fit

    answer = ask_here(capsys, doc, tiny_model_dir, "--attention", "retrieval", question="When was it lit?")
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    shape = ModelShape(layers=config["num_hidden_layers"], kv_heads=config["num_key_value_heads"],
                       query_heads=config["num_attention_heads"], head_dim=config["head_dim"], max_positions=4096)
    estimate = estimate_fit(shape, answer["prompt_tokens"], 0, "retrieval", 8, 32, device_is_cpu=True,
                            data_folder=doc.parent, disk_budget_bytes=10**12)
    assert answer["cache_bytes"] <= estimate.disk_bytes <= 2 * answer["cache_bytes"]
