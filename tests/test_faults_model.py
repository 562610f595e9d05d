"""The fault matrix, models: a missing, incomplete or damaged model folder ends in a ModelError naming the file and
the fix; a model whose weights changed anywhere gets a new identity, so no cache built on the old weights is reused."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelError
from engine.model import load_model


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    return copy


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# (case, how to break the model folder, what the message says). Each is one row of docs/reliability.md.
BROKEN_MODELS = [
    ("model folder missing", lambda m: shutil.rmtree(m), r"was not found"),
    ("no config.json", lambda m: (m / "config.json").unlink(), r"no config.json"),
    ("config.json is not JSON", lambda m: (m / "config.json").write_text("{not json"), r"config.json"),
    ("weights missing", lambda m: (m / "model.safetensors").unlink(), r"no weight files|model.safetensors"),
    ("weights truncated to a tenth", lambda m: _truncate(m / "model.safetensors", 0.1),
     r"model\.safetensors is damaged.*truncated"),
    ("weights cut short by a few bytes", lambda m: _truncate(m / "model.safetensors", 0.999),
     r"model\.safetensors is damaged.*truncated"),
    ("weights replaced by random bytes", lambda m: (m / "model.safetensors").write_bytes(os.urandom(400_000)),
     r"model\.safetensors is damaged.*not a safetensors file"),
    ("weights with a garbled header", lambda m: _garble_header(m / "model.safetensors"),
     r"model\.safetensors is damaged"),
    ("tokenizer missing", lambda m: (m / "tokenizer.json").unlink() or (m / "tokenizer_config.json").unlink(),
     r"has no tokenizer"),
]


def _garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"}" * 32  # the JSON header right after its 8-byte length
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("case", "breakage", "message"), BROKEN_MODELS, ids=[row[0] for row in BROKEN_MODELS])
def test_a_broken_model_folder_is_a_model_error_naming_the_file_and_the_fix(model_copy, case, breakage, message):
    breakage(model_copy)
    with pytest.raises(ModelError, match=message) as info:
        load_model(str(model_copy), device="cpu", dtype="float32")
    assert info.value.fix
    if "weights" in case and "missing" not in case:
        assert "download" in info.value.fix or "convert" in info.value.fix


def _tensor_spans(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (start, end) byte offsets of each tensor's data in a safetensors file."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    base = 8 + length
    return {name: (base + info["data_offsets"][0], base + info["data_offsets"][1])
            for name, info in header.items() if name != "__metadata__"}


def _old_sample_windows(size: int, sample: int = 1 << 20) -> list[tuple[int, int]]:
    """The byte ranges the former fingerprint hashed: 1 MiB at the start, middle and end of a weight file."""
    return [(offset, offset + sample) for offset in {0, max(0, size // 2 - sample // 2), max(0, size - sample)}]


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama with 24 layers: its weight file (about 4.5 MB) is larger than three 1 MiB samples."""
    from tests.conftest import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("deep-llama"), layers=24)


def _edit_outside_old_samples(weights: Path) -> str:
    """Double one layer's k_proj weights (same size, bytes outside the three old samples); returns its name."""
    size = weights.stat().st_size
    windows = _old_sample_windows(size)
    for name, (start, end) in sorted(_tensor_spans(weights).items()):
        if "k_proj" in name and all(end <= a or start >= b for a, b in windows):
            with open(weights, "r+b") as handle:
                handle.seek(start)
                values = np.frombuffer(handle.read(end - start), dtype=np.float32) * 2
                handle.seek(start)
                handle.write(values.tobytes())
            return name
    raise AssertionError("every k_proj overlaps a sampled window: use a deeper model")


def test_editing_one_layers_k_proj_changes_the_model_identity(deep_model_dir, tmp_path, monkeypatch):
    from engine.model import model_fingerprint

    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "edited"
    shutil.copytree(deep_model_dir, copy)
    assert model_fingerprint(copy) == model_fingerprint(deep_model_dir)
    stat = (copy / "model.safetensors").stat()
    _edit_outside_old_samples(copy / "model.safetensors")
    os.utime(copy / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old mtime
    assert model_fingerprint(copy) != model_fingerprint(deep_model_dir)


@pytest.mark.slow  # 24 layers through three asks; test_editing_one_layers_k_proj_changes_the_model_identity is quick
def test_a_stale_cache_is_not_reused_after_the_weights_change(deep_model_dir, tmp_path, monkeypatch):
    """The issue's case: k/v projections of one layer edited; the old cache must be rebuilt, not reused."""
    from engine.config import EngineConfig
    from engine.generate import Finished
    from engine.ingest import Document
    from engine.session import DocumentSession
    from engine.store import Store

    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(deep_model_dir, model)
    config = EngineConfig(attention="window", n_sink=8, n_window=32, max_new_tokens=2)
    document = Document("The light was first lit in 1865 by Anders Brekke. " * 20, "light", None, "1" * 64)

    def ask() -> DocumentSession:
        session = DocumentSession(load_model(str(model), device="cpu", dtype="float32"), document, config, Store())
        assert [e for e in session.ask("When?") if isinstance(e, Finished)]
        return session

    assert not ask().cached
    assert ask().cached
    _edit_outside_old_samples(model / "model.safetensors")
    after = ask()
    assert not after.cached and after.cache_notice == "cache rebuilt: model changed"


def test_each_weight_file_is_hashed_once_until_it_changes(model_copy, tmp_path, monkeypatch):
    from engine import fingerprint

    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "cache"))
    hashed: list[str] = []
    real = fingerprint.file_sha256
    monkeypatch.setattr(fingerprint, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    first = fingerprint.model_fingerprint(model_copy)
    assert hashed == ["model.safetensors"]
    assert fingerprint.model_fingerprint(model_copy) == first and hashed == ["model.safetensors"]  # remembered
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes, rewritten: hashed again, same identity
    assert fingerprint.model_fingerprint(model_copy) == first and len(hashed) == 2


def test_a_hub_download_is_identified_by_the_hubs_own_sha256_without_hashing(model_copy, tmp_path, monkeypatch):
    """In the hub's cache a weight file is a link to blobs/<sha256 of its bytes>: that name is its hash."""
    import hashlib

    from engine import fingerprint

    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "cache"))
    expected = fingerprint.model_fingerprint(model_copy)  # hashed: a plain file
    weights = model_copy / "model.safetensors"
    blobs = tmp_path / "hub" / "blobs"
    blobs.mkdir(parents=True)
    blob = blobs / hashlib.sha256(weights.read_bytes()).hexdigest()
    weights.rename(blob)
    weights.symlink_to(blob)
    monkeypatch.setattr(fingerprint, "file_sha256", lambda path: pytest.fail(f"{path.name} was hashed"))
    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "fresh-cache"))
    assert fingerprint.model_fingerprint(model_copy) == expected
