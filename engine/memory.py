"""What this machine has free and what this process holds: RAM, device memory and disk, in bytes (0 or None where
the platform does not say)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def available_ram() -> int | None:
    """MemAvailable on Linux (free + reclaimable), else the free physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(folder: str | Path) -> int | None:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    path = Path(folder).expanduser()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def process_rss() -> int:
    """Resident memory of this process; its peak where the current value is unknown; 0 where neither is known."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return 0


def device_free(device) -> int | None:
    """Free memory on a CUDA `device` (torch.device); None for the CPU."""
    if device.type != "cuda":
        return None
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def memory_in_use(device) -> tuple[int, str]:
    """(bytes, "VRAM" or "RAM"): what the model's `device` has allocated on a GPU, else this process's RAM."""
    if device is not None and device.type == "cuda":
        import torch

        return int(torch.cuda.memory_allocated(device)), "VRAM"
    return process_rss(), "RAM"
