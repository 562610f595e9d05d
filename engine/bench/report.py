"""Benchmark rows: collect flat dicts, print an aligned table, write JSON.

Row keys used where they apply: method, param, tokens, recall_at_100, scanned_fraction, build_s,
prefill_s, step_ms, depth, passed, top1_agreement, kl. Suites may add others.

JSON written: {"suite": str, "machine": str, "date": ISO-8601, "notes": [str], "rows": [dict]}.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Any


def machine_description() -> str:
    """A short string: CPU model and logical core count, plus the CUDA GPU name when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"cuda: {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    return "; ".join(parts)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


class Report:
    """Rows of one suite run. `add` a row per measurement; `print_table` and `write_json` at the end."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.machine = machine_description()
        self.date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def add(self, echo: bool = True, **row: Any) -> dict[str, Any]:
        """Append one flat row (values: str, int, float, bool or None); echo prints it as it comes."""
        self.rows.append(row)
        if echo:
            print("  " + "  ".join(f"{k}={_format(v)}" for k, v in row.items()), flush=True)
        return row

    def note(self, text: str) -> None:
        """A free-text remark printed under the table and stored in the JSON."""
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def columns(self) -> list[str]:
        """Union of row keys in order of first appearance."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def table(self) -> str:
        """The rows as an aligned text table (text left-aligned, numbers right-aligned)."""
        cols = self.columns()
        cells = [[_format(row.get(c)) for c in cols] for row in self.rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]
        numeric = [all(isinstance(row.get(c), int | float) or row.get(c) is None for row in self.rows) for c in cols]

        def line(values: list[str]) -> str:
            return "  ".join(
                v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
            ).rstrip()

        out = [line(cols), line(["-" * w for w in widths])]
        out += [line(r) for r in cells]
        return "\n".join(out)

    def print_table(self) -> None:
        print(f"\n== {self.suite} | {self.machine} | {self.date}")
        print(self.table())
        for text in self.notes:
            print(f"note: {text}")

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "machine": self.machine,
            "date": self.date,
            "notes": self.notes,
            "rows": [{k: _plain(v) for k, v in row.items()} for row in self.rows],
        }

    def write_json(self, path: str | Path) -> None:
        """Write atomically (temporary name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, default=_json_default) + "\n")
        tmp.replace(path)


def _plain(value: Any) -> Any:
    """NaN/inf -> None so that the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    """numpy scalars and the like -> plain Python."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
