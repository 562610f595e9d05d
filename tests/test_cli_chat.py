"""`python -m engine chat`, `ask --chat ID`, `library chats ID` and `library export` end to end on the tiny model."""

import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ["--attention", "exact", "--n-sink", "8", "--n-window", "32", "--max-new-tokens", "6"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def engine(capsys, monkeypatch):
    """Run the command line in this process (a new process proves nothing more here), `stdin` as its input."""
    def run(*args, stdin: str = "") -> Result:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def test_ask_starts_a_chat_that_ask_chat_continues_from_the_library(engine, tiny_model_dir, tmp_path):
    doc = tmp_path / "light.txt"
    doc.write_text("The light was first lit in 1865 by Anders Brekke. " * 20)
    first = json.loads(engine("ask", doc, "When was it lit?", "--model", tiny_model_dir, *OPTIONS, "--json").stdout)
    assert first["chat_id"] == 1 and first["turn"] == 1
    second = engine("ask", doc, "Who lit it?", "--chat", 1, "--model", tiny_model_dir, *OPTIONS, "--json")
    assert second.returncode == 0, second.stderr
    second = json.loads(second.stdout)
    third = json.loads(engine("ask", "@1", "Why?", "--chat", 1, "--model", tiny_model_dir, *OPTIONS, "--json").stdout)
    assert (second["chat_id"], second["turn"], third["turn"]) == (1, 2, 3)
    assert second["cached"] and third["cached"]
    # a new process reuses the stored document and prefills only the chat's turns and the new question
    assert second["prompt_tokens"] - second["prefill_tokens"] == third["prompt_tokens"] - third["prefill_tokens"]
    assert third["prompt_tokens"] > second["prompt_tokens"] > first["prompt_tokens"]
    listed = json.loads(engine("library", "chats", 1, "--json").stdout)
    assert [(c["id"], c["turns"], c["title"]) for c in listed] == [(1, 3, "When was it lit?")]
    markdown = engine("library", "export", 1).stdout
    assert [line for line in markdown.splitlines() if line.startswith("> ")] == [
        "> When was it lit?", "> Who lit it?", "> Why?"]
    missing = engine("ask", doc, "More?", "--chat", 7, "--model", tiny_model_dir, *OPTIONS)
    assert missing.returncode == 2 and "no chat 7" in missing.stderr and "Traceback" not in missing.stderr
    refused = engine("ask", doc, "More?", "--chat", 1, "--no-cache", "--model", tiny_model_dir, *OPTIONS)
    assert refused.returncode == 2 and "Drop --no-cache" in refused.stderr
    assert engine("library", "chats", 9).returncode == 2


def test_interactive_chat_follow_ups_regen_export_new_and_leave(engine, tiny_model_dir, tmp_path):
    doc = tmp_path / "light.md"
    doc.write_text("# Light\n\nThe light was first lit in 1865.\n\nPuffins nest on the cliffs.\n" * 5)
    export = tmp_path / "chat.md"
    lines = ["When was it lit?", "And who lit it?", "/regen", f"/export {export}", "/new", "Where do puffins nest?",
             "/nonsense", "   "]
    result = engine("chat", doc, "--model", tiny_model_dir, *OPTIONS, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert "Wrote 2 turn(s)" in result.stderr and "Unknown command /nonsense" in result.stderr
    assert "Traceback" not in result.stderr
    text = export.read_text()
    assert "> When was it lit?" in text and "> And who lit it?" in text and "version 2 of 2" in text
    chats = json.loads(engine("library", "chats", 1, "--json").stdout)
    assert sorted(c["turns"] for c in chats) == [1, 2]


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(engine, tiny_model_dir, tmp_path):
    doc = tmp_path / "light.txt"
    doc.write_text("The light was first lit in 1865. " * 20)
    options = [o if o != "6" else "1000" for o in OPTIONS]  # an answer long enough to stop
    process = subprocess.Popen([sys.executable, "-m", "engine", "chat", str(doc), "--model", str(tiny_model_dir),
                                *options], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    process.stdin.write("Tell me everything.\n")
    process.stdin.flush()
    assert process.stdout.read(1) is not None  # the answer is streaming
    os.kill(process.pid, signal.SIGINT)
    process.stdin.write("/quit\n")
    process.stdin.flush()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "[stopped]" in err and "Traceback" not in err
    assert "*(stopped)*" in engine("library", "export", 1).stdout
