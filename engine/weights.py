"""A model folder's weight files: which they are, and whether each safetensors file is whole (for a message that
names the damaged file instead of a loader's traceback)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from engine.errors import ModelError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)


def safetensors_damage(path: Path) -> str | None:
    """Why the safetensors file at `path` is not whole ("truncated: 40,000 of 400,664 bytes"), or None when its
    header parses and its tensors' data exactly fill the file. Reads only the header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"not a safetensors file: only {size:,} bytes"
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                return "not a safetensors file: its header length is impossible"
            if 8 + length > size:
                return f"truncated: {size:,} bytes, less than its {8 + length:,}-byte header"
            header = json.loads(handle.read(length))
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    except (ValueError, UnicodeDecodeError):
        return "not a safetensors file: its header is not valid JSON"
    if not isinstance(header, dict):
        return "not a safetensors file: its header is not a table of tensors"
    try:
        end = max((int(info["data_offsets"][1]) for name, info in header.items() if name != "__metadata__"), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        return "not a safetensors file: its header does not give the tensors' offsets"
    expected = 8 + length + end
    if size < expected:
        return f"truncated: {size:,} of {expected:,} bytes"
    if size > expected:
        return f"{size - expected:,} bytes longer than its tensors"
    return None


def load_error(folder: Path, error: BaseException) -> ModelError:
    """The ModelError for a model folder that failed to load with `error`: a damaged weight file or a missing tokenizer
    is named with the fix, anything else keeps the loader's first line."""
    for path in weight_files(folder):
        damage = safetensors_damage(path) if path.suffix == ".safetensors" else None
        if damage:
            return ModelError(f"The model in {folder} cannot be loaded: {path.name} is damaged ({damage}).",
                              "Download or convert the model again (for the default model, delete that folder and "
                              "run `python -m engine setup`), or choose another model.")
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        return ModelError(f"The model in {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}).",
                          "Copy the tokenizer files from where the model came from, or download the model again.")
    return ModelError(f"The model in {folder} could not be loaded: {str(error).splitlines()[0]}",
                      "Check that the folder holds a complete transformers causal LM.")
