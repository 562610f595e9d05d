"""The fault matrix, processes: `ask` killed with SIGKILL in the middle of the prefill or of the index build leaves a
library that opens, lists the document, and builds and saves its cache on the next ask. (Killed while saving, and two
processes at once: tests/test_reopen.py.)"""

from __future__ import annotations

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
from tests.faults import ASK_OPTIONS, LIGHT_TEXT, ROOT, engine_env

# Runs `ask`; at the first progress event of stage argv[1] past its start it says STAGE on stdout and sleeps, so the
# test can kill -9 it right there.
PAUSE_AT_STAGE = textwrap.dedent("""
    import sys, time
    from engine import events
    stage, real = sys.argv[1], events.ProgressPrinter.__call__
    def call(self, event):
        real(self, event)
        if event.stage == stage and 0 < event.done < event.total:
            print("STAGE", flush=True)
            time.sleep(300)
    events.ProgressPrinter.__call__ = call
    from engine.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("stage", ["prefill", pytest.param("index", marks=pytest.mark.slow)])
def test_kill_9_during_a_stage_leaves_a_library_that_opens_and_rebuilds(tiny_model_dir, tmp_path, capsys, stage):
    doc = tmp_path / "light.txt"
    doc.write_text(LIGHT_TEXT)
    data = Path(os.environ["FOLIO_DATA_DIR"])  # this test's own (tests/conftest.py)
    options = ASK_OPTIONS
    process = subprocess.Popen([sys.executable, "-c", PAUSE_AT_STAGE, stage, "ask", str(doc), "When?", "--model",
                                str(tiny_model_dir), *options, "--json"], cwd=ROOT, env=engine_env(data),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "STAGE", process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    store = Store()
    assert [d.title for d in store.list_documents()] == ["light"] and not store.list_documents()[0].cached
    assert not list(data.rglob("*.tmp"))
    store.close()
    for cached in (False, True):
        capsys.readouterr()
        assert main(["ask", str(doc), "When?", "--model", str(tiny_model_dir), *options, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["cached"] is cached
