"""Models split across devices by accelerate's device_map, on the CPU: a tiny Llama whose max_memory keeps some
layers in CPU memory and sends the rest to disk (accelerate loads those layers' weights at each forward), so the
split runs here. On a CPU-only machine every layer computes on the CPU; that each layer's static set goes to its
own layer's device is checked with accelerate hooks naming two GPUs (nothing runs on them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.cache import RetrievalCache, RetrievalSettings
from engine.config import EngineConfig
from engine.ingest import Document
from engine.model import layer_devices, load_model
from engine.session import DocumentSession
from tests.conftest import make_tiny_model_dir
from tests.greedy_reference import full_attention_logits, retrieval_logits

LAYERS = 4


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-4-layers"), layers=LAYERS)


@pytest.fixture(scope="module")
def whole(four_layer_dir):
    """The split's reference: float32 weights, as a split model keeps them (int8 CPU weights are for whole models)."""
    return load_model(str(four_layer_dir), device="cpu", dtype="float32", cpu_weights="full")


@pytest.fixture(scope="module")
def split(four_layer_dir, whole, tmp_path_factory):
    size = sum(p.numel() * p.element_size() for p in whole.model.parameters())
    return load_model(str(four_layer_dir), device="cpu", dtype="float32", max_memory={"cpu": int(0.6 * size)},
                      offload_folder=tmp_path_factory.mktemp("offload"))


def test_max_memory_forces_a_split(split):
    placed = split.model.hf_device_map
    assert "cpu" in placed.values() and "disk" in placed.values()
    assert split.layer_devices == [torch.device("cpu")] * LAYERS == split.cache_devices
    assert split.cpu_weights == "full"  # int8 CPU weights (the default) are for a whole model, not a split one


def test_split_model_computes_what_the_whole_one_does(whole, split):
    ids = torch.randint(3, 390, (1, 50), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(whole.model(ids).logits, split.model(ids).logits)


def test_retrieval_decoding_on_a_split_model_equals_full_attention(split):
    model = split.model
    prefix = torch.randint(3, 390, (160,), generator=torch.Generator().manual_seed(1))
    question = torch.randint(3, 390, (5,), generator=torch.Generator().manual_seed(2))
    reference = full_attention_logits(model, torch.cat([prefix, question]), steps=3)
    settings = RetrievalSettings(method="exact", n_sink=8, n_window=16, top_k=160, kv_dtype=torch.float32)
    logits, _ = retrieval_logits(model, prefix, question, 3, settings, devices=split.cache_devices)
    for got, want in zip(logits, reference, strict=True):
        assert (got - want).abs().max() <= 1e-4
    model.set_attn_implementation("sdpa")


@pytest.mark.slow
def test_a_session_answers_on_a_split_model(split, whole):
    document = Document(text="The lighthouse stands on the island. " * 40, title="t", source=Path("t.txt"),
                        sha256="ab" * 32)
    config = EngineConfig(max_new_tokens=6)
    answers = []
    for loaded in (whole, split):
        session = DocumentSession(loaded, document, config)
        answers.append([e for e in session.ask("Where is the lighthouse?")][-1].text)
        loaded.model.set_attn_implementation("sdpa")
    assert answers[0] == answers[1]


def test_each_layer_static_set_goes_to_its_layer_device(four_layer_dir):
    """Where accelerate runs each layer (its hook's execution device) is where that layer's static set lives."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    loaded = load_model(str(four_layer_dir), device="cpu", dtype="float32")
    wanted = [torch.device("cuda", i // 2) for i in range(LAYERS)]
    for layer, device in zip(loaded.model.model.layers, wanted, strict=True):
        add_hook_to_module(layer, AlignDevicesHook(execution_device=device))
    assert layer_devices(loaded.model) == wanted
    cache = RetrievalCache(LAYERS, 64, wanted, RetrievalSettings())
    assert [layer.device for layer in cache.layers] == wanted
    with pytest.raises(ValueError, match="3 devices for 4 layers"):
        RetrievalCache(LAYERS, 64, wanted[:3], RetrievalSettings())
