"""`python tests/fake_gpu_runtime.py DIR`: a fake `nvidia-smi` in DIR/bin and a ready GPU runtime in DIR/runtime
whose torch raises ImportError(MARKER) — to check that an installed, frozen Folio imports torch from a downloaded
runtime before its bundled CPU build (packaging/test_deb.sh)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.runtime.builds import choose_build  # noqa: E402
from app.runtime.detect import GpuInfo  # noqa: E402
from app.runtime.layout import SITE_DIR, write_stamp  # noqa: E402

MARKER = "FAKE CUDA TORCH from the runtime was imported"
GPU = GpuInfo("NVIDIA GeForce RTX 4090", "560.35.03", 24564, "12.6")
FAKE_SMI = """#!/bin/sh
if [ "$#" -gt 0 ]; then
  echo "NVIDIA GeForce RTX 4090, 560.35.03, 24564"
else
  echo "| NVIDIA-SMI 560.35.03    Driver Version: 560.35.03    CUDA Version: 12.6 |"
fi
"""


def make_fake_gpu_runtime(folder: Path, torch_version: str) -> Path:
    """Write DIR/bin/nvidia-smi and a stamped runtime DIR/runtime/<tag> for `torch_version`; return the runtime."""
    smi = folder / "bin" / "nvidia-smi"
    smi.parent.mkdir(parents=True, exist_ok=True)
    smi.write_text(FAKE_SMI, encoding="utf-8")
    smi.chmod(0o755)
    build = choose_build(GPU, torch_version)
    path = folder / "runtime" / build.tag
    site = path / SITE_DIR
    (site / "torch").mkdir(parents=True, exist_ok=True)
    (site / "torch" / "__init__.py").write_text(f"raise ImportError({MARKER!r})\n", encoding="utf-8")
    info = site / f"torch-{build.torch_version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {build.torch_version}\n",
                                   encoding="utf-8")
    write_stamp(path, build, f"torch-{build.torch_version}-fake.whl", "ab" * 32)
    return path


if __name__ == "__main__":
    torch_version = sys.argv[2] if len(sys.argv) > 2 else "2.13.0+cpu"
    print(make_fake_gpu_runtime(Path(sys.argv[1]), torch_version))
