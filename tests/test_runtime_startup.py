"""app.runtime.startup: which torch is installed, and using a ready GPU runtime before torch is imported.

The subprocess tests run a fresh interpreter (torch not yet imported) with a fake ``nvidia-smi`` on PATH and
FOLIO_RUNTIME_DIR at a temporary folder holding a hand-made runtime (a fake torch package, its dist-info, and
the version stamp).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.runtime.activate import ACTIVE_ENV, restart_command
from app.runtime.builds import choose_build
from app.runtime.detect import GpuInfo
from app.runtime.layout import RUNTIME_DIR_ENV, SITE_DIR, read_stamp, write_stamp
from app.runtime.source import SOURCE_ENV
from app.runtime.startup import installed_torch, is_cpu_build, use_ready_runtime
from tests.fake_gpu_runtime import FAKE_SMI, GPU

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import importlib.metadata, sys; from app.runtime.startup import use_ready_runtime; "
         "print(use_ready_runtime()); print(sys.path[0]); print(importlib.metadata.version('torch'))")


def cpu_torch() -> str:
    torch = installed_torch()
    if torch is None or not torch.cpu_only:
        pytest.skip("needs the CPU build of torch installed (the app's default)")
    return torch.version


def make_runtime(root: Path, torch_version: str, stamp: bool = True) -> Path:
    """A ready runtime folder ``<root>/cu126`` for the installed torch's version, built by hand."""
    build = choose_build(GPU, torch_version)
    path = root / build.tag
    site = path / SITE_DIR
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(f'__version__ = "{build.torch_version}"\n', encoding="utf-8")
    info = site / f"torch-{build.torch_version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {build.torch_version}\n",
                                   encoding="utf-8")
    if stamp:
        write_stamp(path, build, f"torch-{build.torch_version}-fake.whl", "ab" * 32)
    return path


def run_probe(tmp_path: Path, runtime_root: Path, with_gpu: bool = True,
              extra_env: dict[str, str] | None = None, code: str = PROBE) -> list[str]:
    """Run ``code`` in a fresh interpreter; nvidia-smi on PATH only ``with_gpu``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    if with_gpu:
        smi.write_text(FAKE_SMI, encoding="utf-8")
        smi.chmod(0o755)
    else:
        smi.unlink(missing_ok=True)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", ACTIVE_ENV, SOURCE_ENV)}
    env |= {"PATH": str(bin_dir), RUNTIME_DIR_ENV: str(runtime_root), **(extra_env or {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=ROOT, check=True)
    return out.stdout.splitlines()


# --------------------------------------------------------------------------------------------- which torch


@pytest.mark.parametrize(("version", "requires", "cpu"), [
    ("2.13.0+cpu", [], True),
    ("2.13.0+cpu.cxx11.abi", None, True),
    ("2.13.0+cu126", [], False),
    ("2.13.0+rocm6.3", [], False),
    ("2.13.0", ['nvidia-cublas-cu12==12.6.4.1; platform_system == "Linux"', "sympy"], sys.platform != "linux"),
    ("2.13.0", ["nvidia-cublas-cu12==12.6.4.1"], False),
    ("2.13.0", ["filelock", "sympy>=1.13", "not a requirement !!"], True),  # PyPI's Windows/macOS wheel
])
def test_is_cpu_build(version: str, requires: list[str] | None, cpu: bool) -> None:
    assert is_cpu_build(version, requires) is cpu


def test_installed_torch_reads_metadata_without_importing_torch_or_qt() -> None:
    code = ("import sys; from app.runtime.startup import installed_torch; t = installed_torch(); "
            "from app.runtime.builds import base_torch_version; "
            "loaded = any(m.split('.')[0] in ('torch', 'PySide6', 'engine') for m in sys.modules); "
            "print(t.version, base_torch_version(t.version), loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=ROOT)
    import torch

    version, base, imported = out.stdout.split()
    assert version == torch.__version__ and base == torch.__version__.split("+")[0] and imported == "False"


# ------------------------------------------------------------------------------------------ use_ready_runtime


def test_ready_runtime_is_put_first_on_sys_path(tmp_path: Path) -> None:
    version = cpu_torch()
    path = make_runtime(tmp_path / "runtime", version)
    site = str((path / SITE_DIR).resolve())
    code = PROBE + "; import torch; print(torch.__version__)"

    described, first, metadata_version, imported = run_probe(tmp_path, tmp_path / "runtime", code=code)

    cuda_version = version.split("+")[0] + "+cu126"
    assert described == f"GPU runtime torch {cuda_version} for NVIDIA GeForce RTX 4090 ({path})"
    assert first == site
    assert metadata_version == imported == cuda_version  # the fake CUDA torch is what loads


def test_without_stamp_nothing_is_applied(tmp_path: Path) -> None:
    version = cpu_torch()
    path = make_runtime(tmp_path / "runtime", version, stamp=False)
    described, first, metadata_version = run_probe(tmp_path, tmp_path / "runtime")
    assert described == "None"
    assert first != str((path / SITE_DIR).resolve()) and metadata_version == version


def test_without_gpu_nothing_is_applied(tmp_path: Path) -> None:
    version = cpu_torch()
    make_runtime(tmp_path / "runtime", version)
    described, _first, metadata_version = run_probe(tmp_path, tmp_path / "runtime", with_gpu=False)
    assert described == "None" and metadata_version == version


def test_stamp_for_another_torch_version_is_not_applied(tmp_path: Path) -> None:
    cpu_torch()
    path = make_runtime(tmp_path / "runtime", "1.0.0+cpu")  # a runtime left from an older app version
    assert read_stamp(path)["torch_version"] == "1.0.0+cu126"  # type: ignore[index]
    described, _first, _version = run_probe(tmp_path, tmp_path / "runtime")
    assert described == "None"


def test_restarted_process_reports_the_active_runtime(tmp_path: Path) -> None:
    version = cpu_torch()
    path = make_runtime(tmp_path / "runtime", version)
    _argv, env = restart_command(path, {})
    described, _first, metadata_version = run_probe(tmp_path, tmp_path / "runtime", extra_env=env)
    cuda_version = version.split("+")[0] + "+cu126"
    assert metadata_version == cuda_version
    assert described == f"GPU runtime torch {cuda_version} ({path.resolve()})"


def test_in_process_no_gpu_or_imported_torch_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = cpu_torch()
    make_runtime(tmp_path / "runtime", version)
    env = {RUNTIME_DIR_ENV: str(tmp_path / "runtime")}
    before = list(sys.path)
    assert use_ready_runtime(lambda: None, env) is None
    assert use_ready_runtime(lambda: GPU, env) is None  # torch is already imported in the test process
    assert use_ready_runtime(lambda: GpuInfo("Tesla K80", "470.57.02", None, "11.4"), env) is None
    assert sys.path == before


def test_without_a_downloaded_runtime_start_up_does_not_run_nvidia_smi(tmp_path: Path) -> None:
    cpu_torch()
    calls: list[int] = []

    def detect() -> GpuInfo:
        calls.append(1)
        return GPU

    assert use_ready_runtime(detect, env={RUNTIME_DIR_ENV: str(tmp_path / "runtime")}) is None
    assert calls == []
