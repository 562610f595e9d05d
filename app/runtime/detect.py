"""Finding an NVIDIA GPU and its driver with nvidia-smi."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
SMI_TIMEOUT_S = 10

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class GpuInfo:
    """The first NVIDIA GPU nvidia-smi reports."""

    name: str
    driver_version: str
    memory_mib: int | None = None
    cuda_version: str | None = None  # the newest CUDA the driver supports ("12.4"), from the nvidia-smi header


def _run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout, capturing text output (the default runner for :func:`detect_nvidia`)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False)


def _smi_output(run: Runner, argv: Sequence[str]) -> str | None:
    """stdout of ``argv``, or None when the command is missing, fails or times out."""
    try:
        result = run(argv)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout or ""


def parse_smi_query(text: str) -> tuple[str, str, int | None] | None:
    """Parse the first line of ``--query-gpu=name,driver_version,memory.total`` csv output."""
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) >= 3 and parts[0] and re.fullmatch(r"\d+(\.\d+)*", parts[1]):
            memory = int(float(parts[2])) if re.fullmatch(r"\d+(\.\d+)?", parts[2]) else None
            return parts[0], parts[1], memory
    return None


def parse_smi_cuda_version(text: str) -> str | None:
    """The "CUDA Version: 12.4" from the plain nvidia-smi header, or None."""
    match = re.search(r"CUDA Version\s*:\s*(\d+\.\d+)", text)
    return match.group(1) if match else None


def detect_nvidia(run: Runner = _run_command) -> GpuInfo | None:
    """Detect an NVIDIA GPU and its driver with nvidia-smi; None without one (or without a working driver).

    ``run`` takes an argv and returns a ``CompletedProcess`` (tests feed fake outputs); it may raise
    FileNotFoundError when nvidia-smi is not installed.
    """
    query = _smi_output(run, SMI_QUERY)
    parsed = parse_smi_query(query) if query is not None else None
    if parsed is None:
        return None
    name, driver, memory = parsed
    header = _smi_output(run, ["nvidia-smi"])
    cuda = parse_smi_cuda_version(header) if header else None
    return GpuInfo(name=name, driver_version=driver, memory_mib=memory, cuda_version=cuda)
