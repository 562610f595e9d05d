"""`folio --self-test`: load the default model, answer the sample question in an offscreen window, print timings.

It goes through the real window, worker thread and engine, so a frozen or installed app that passes it can
load Qt's platform plugin, the model, the tokenizer, the PDF/text reader, the index and the document library.
Its library lives in a temporary folder (the user's documents are not touched); the converted default model is
kept in the user cache as usual, so a second run skips the conversion.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

from app.frozen import is_frozen
from app.version import app_version

TIMEOUT_S = 900


def run_self_test(gpu_runtime: str | None = None, timeout_s: float = TIMEOUT_S, backend=None) -> int:
    """Exit status 0 when the sample question is answered correctly; prints what it did and how long it took.

    `gpu_runtime` describes the downloaded GPU runtime in use, if any (app.runtime.startup.use_ready_runtime).
    `backend`: the engine backend (the real one by default; tests give a fake one).
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    started = time.monotonic()
    frozen = "frozen" if is_frozen() else "from source"
    print(f"Folio {app_version()} self-test ({frozen}, Python {platform.python_version()}, {sys.platform})",
          flush=True)
    if gpu_runtime:
        print(f"  runtime:  {gpu_runtime}", flush=True)
    from PySide6.QtWidgets import QApplication

    from app.backend import RealBackend
    from app.main_window import MainWindow
    from app.sample.run import SAMPLE_QUESTION, SampleRun, SampleRunResult, answer_problem
    from app.settings import AppSettings

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory(prefix="folio-self-test-") as data_folder:
        settings = AppSettings().with_changes(max_new_tokens=48, folder=data_folder, gpu_runtime_auto_download=False)
        window = MainWindow(backend or RealBackend(), settings, settings_path=None)
        window.show()
        outcome: list[SampleRunResult] = []

        def finished(result: SampleRunResult) -> None:
            outcome.append(result)
            app.exit(0)

        run = SampleRun(window, finished, timeout_s)  # keep a reference: Qt's timers do not
        run.start()
        app.exec()
        window.close()  # stops the engine thread
    result = outcome[0] if outcome else SampleRunResult(error="the window closed before the run finished")
    info = window.model_info
    if info is not None:
        print(f"  model:    {info.name} on {info.device} — loaded in {result.stage_s.get('load', 0):.1f} s", flush=True)
    if "open" in result.stage_s:
        print(f"  document: sample.md read, prefilled and indexed in {result.stage_s['open']:.1f} s")
    print(f"  question: {SAMPLE_QUESTION}")
    if "ask" in result.stage_s:
        print(f"  answer:   {result.answer.strip()!r} in {result.stage_s['ask']:.1f} s")
    print(f"  total:    {time.monotonic() - started:.1f} s")
    if result.error:
        print(f"self-test FAILED: {result.error}", file=sys.stderr)
        return 1
    if problem := answer_problem(result.answer):
        print(f"self-test FAILED: {problem}", file=sys.stderr)
        return 1
    print("self-test passed")
    return 0
