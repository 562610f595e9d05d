"""Shared fixtures: a tiny random Llama with a real (tiny) tokenizer, built offline from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. A lighthouse stands on the island.",
    "Question answering over whole documents with retrieval attention and a graph index.",
    "Keepers recorded the weather three times a day; the light never failed in the storm.",
    "0123456789 !?.,;:'\"()[]{}<>/-_=+*&^%$#@~` abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def make_tiny_model_dir(path: Path, max_positions: int = 2048, layers: int = 2) -> Path:
    """Save a random tiny Llama (4 query heads, 2 KV heads, head_dim 16) and a tiny BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so greedy choices are clear-cut
        model.lm_head.weight.mul_(20)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    from engine.model import load_model

    # float32 weights (not the CPU default, int8): the engine's features are tested against float32 references, and
    # some tests scale or cast the weights; tests/test_cpu_weights.py holds int8 to float32
    return load_model(str(tiny_model_dir), device="cpu", dtype="float32", cpu_weights="full")


@pytest.fixture(autouse=True)
def _tiny_model_starts_on_sdpa(request):
    """Tests share one tiny model; a session's ask switches its attention, so each test starts from sdpa."""
    if "tiny_loaded" in request.fixturenames:
        request.getfixturevalue("tiny_loaded").model.set_attn_implementation("sdpa")


@pytest.fixture(autouse=True)
def _isolated_folio_dirs(tmp_path, monkeypatch):
    """Keep tests away from the user's data; share the default model's cache if it exists."""
    monkeypatch.setenv("FOLIO_DATA_DIR", str(tmp_path / "folio-data"))


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A fresh folder for the app's settings and state (FOLIO_CONFIG_DIR)."""
    path = tmp_path / "config"
    monkeypatch.setenv("FOLIO_CONFIG_DIR", str(path))
    return path


@pytest.fixture
def make_window(qtbot, tmp_path, config_dir):
    """make_window(backend=None, size=None, first_run=False, wait_loaded=True): the app's MainWindow on a fake
    backend (FakeBackend(step_s=0.005) unless given), shown (resized to `size`), its library in tmp_path, its model
    loaded unless wait_loaded is False; shut down after the test."""
    from app.fake_backend import FakeBackend
    from app.main_window import MainWindow
    from app.settings import AppSettings

    windows = []

    def make(backend=None, size: tuple[int, int] | None = None, first_run: bool = False, wait_loaded: bool = True):
        settings = AppSettings().with_changes(folder=str(tmp_path / "data"))
        window = MainWindow(backend or FakeBackend(step_s=0.005), settings, config_dir / "settings.json",
                            first_run=first_run)
        qtbot.addWidget(window)
        if size is not None:
            window.resize(*size)
        window.show()
        windows.append(window)
        if wait_loaded:
            qtbot.waitUntil(lambda: window.model_info is not None and not window.controller.busy, timeout=5000)
        return window

    yield make
    for window in windows:
        window.models.shutdown()
        window.controller.shutdown()
