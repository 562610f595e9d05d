"""Helpers of the fault-matrix tests (tests/test_faults_*.py): hand-built PDFs, a small real disk (tmpfs), the engine
in a subprocess, and the cases' shared document and options."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest

from engine.bench.fuzz_suite import pdf_from_objects as raw_pdf  # noqa: F401  (the fault tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
ASK_OPTIONS = ["--attention", "exact", "--n-sink", "8", "--n-window", "32", "--max-new-tokens", "6"]
LIGHT_TEXT = "The light was first lit in 1865 by Anders Brekke. " * 30


def one_page_objects(text: str = "Hello from page one", kids: bytes = b"[3 0 R]") -> list[bytes]:
    """Catalog, page tree (with `kids`), one page, its content stream and font."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    return [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids " + kids + b" /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]


def text_pdf(pages: list[str], encrypt: bool = False) -> bytes:
    """A PDF made by MuPDF with one page per entry of `pages` (an empty entry: a page without text)."""
    pdf = pymupdf.open()
    for text in pages:
        page = pdf.new_page()
        if text:
            page.insert_text((72, 72), text)
    options = {"encryption": pymupdf.PDF_ENCRYPT_AES_256, "user_pw": "secret", "owner_pw": "o"} if encrypt else {}
    return pdf.tobytes(**options)


def engine_env(data_dir: Path | None = None) -> dict[str, str]:
    """The environment of an engine subprocess: this checkout first on the path, the test's own data folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if data_dir is not None:
        env["FOLIO_DATA_DIR"] = str(data_dir)
    return env


def run_engine(*args, data_dir: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m engine ARGS` in a new process; stdout and stderr apart."""
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=engine_env(data_dir), timeout=timeout)


def ask_json(doc: Path | str, model_dir: Path, *extra, data_dir: Path | None = None,
             question: str = "When was it lit?") -> dict:
    """Ask in a new process with --json; fails the test unless it exits 0 and stdout is one JSON object."""
    result = run_engine("ask", doc, question, "--model", model_dir, *ASK_OPTIONS, *extra, "--json",
                        data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def can_mount_tmpfs() -> str | None:
    """None when this process may mount a tmpfs (root, and mount(2) allowed), else why not."""
    if os.name != "posix" or os.geteuid() != 0:
        return "mounting a small file system needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A real file system of `size` bytes (tmpfs) at `folder`, unmounted afterwards. Skips the test where the
    sandbox does not allow mounting (the fault-injected tests cover the same code there)."""
    reason = can_mount_tmpfs()
    if reason:
        pytest.skip(reason)
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(folder: Path, leave_free: int) -> None:
    """Write a filler file so that only about `leave_free` bytes stay free on folder's file system."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_free))
