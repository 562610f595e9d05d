"""Byte counts as people read and write them: one convention (binary, IEC names) for the CLI and the window."""

from __future__ import annotations

GIB = 2**30
_PREFIXES = ("B", "KiB", "MiB", "GiB", "TiB")
_PARSE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
                "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB', 50 * 2**30 -> '50.0 GiB' (powers of 1,024, as memory and the disk budget are counted)."""
    for unit in _PREFIXES:
        if abs(count) < 1024 or unit == _PREFIXES[-1]:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """'50GiB', '500 MB', '1.5G', '123' (bytes) -> bytes. KB/MB/GB/TB are decimal, K/M/G/T and KiB... binary."""
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (examples: 50GiB, 500MB)") from None
    if unit not in _PARSE_UNITS or value < 0:
        raise ValueError(f"{text!r} is not a size (examples: 50GiB, 500MB)")
    return int(value * _PARSE_UNITS[unit])
