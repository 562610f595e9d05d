"""Weight-only int8 linear layers (engine.cpu_weights) against float32: the layer within the error its scales allow,
the tiny Llama's greedy tokens, and the option from the CLI and config to the loaded model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from engine.config import ConfigChange, EngineConfig
from engine.cpu_weights import KERNEL_MAX_ROWS, Int8Linear, quantize_rows
from engine.generate import Finished
from engine.model import load_model
from tests.test_generate import prompt_ids, run


def linear(in_features: int = 96, out_features: int = 37, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight[3] = 0.0  # an all-zero row
        layer.weight[5, 7] = 40.0  # an outlier: its row's scale is large
    return layer


def test_quantized_rows_reconstruct_each_weight_within_half_a_scale():
    weight = linear().weight
    q, scales = quantize_rows(weight)
    assert q.dtype == torch.int8 and scales.shape == (weight.shape[0],)
    assert q.abs().max() <= 127
    error = (q.float() * scales[:, None] - weight).abs()
    assert (error <= scales[:, None] / 2 + 1e-6).all()
    assert scales[3] == 1 and (q[3] == 0).all()


@pytest.mark.parametrize("rows", [1, KERNEL_MAX_ROWS, KERNEL_MAX_ROWS + 3])  # the kernel, and dequantized matmul
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_within_the_bound_its_scales_give(rows, bias):
    """|y - y_float32| <= sum_k |x_k| * scale_n / 2 per output (each weight is off by at most half its row's scale),
    and exactly the product with the dequantized weight up to float32 rounding."""
    reference = linear(bias=bias)
    layer = Int8Linear(reference)
    x = torch.randn(2, rows, reference.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = layer(x), reference(x)
        dequantized = nn.functional.linear(x, layer.dequantized(), reference.bias)
    assert got.shape == want.shape and got.dtype == torch.float32
    bound = x.abs().sum(-1, keepdim=True) * layer.scales / 2
    assert ((got - want).abs() <= bound * 1.001 + 1e-5).all()
    assert (got - want).abs().max() > 0  # really int8
    torch.testing.assert_close(got, dequantized, atol=1e-4, rtol=1e-5)


def test_int8_linear_keeps_the_input_dtype():
    layer = Int8Linear(linear())
    x = torch.randn(1, 96).bfloat16()
    assert layer(x).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def int8_loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", dtype="float32", cpu_weights="int8")


@pytest.fixture(scope="module")
def float32_loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", dtype="float32", cpu_weights="full")


def test_loading_with_int8_cpu_weights_replaces_every_linear_layer(int8_loaded, float32_loaded):
    assert int8_loaded.cpu_weights == "int8" and float32_loaded.cpu_weights == "full"
    assert not any(type(m) is nn.Linear for m in int8_loaded.model.modules())
    assert isinstance(int8_loaded.model.lm_head, Int8Linear)
    assert int8_loaded.model.model.embed_tokens.weight.dtype == torch.float32  # the input table stays float32
    assert int8_loaded.fingerprint != float32_loaded.fingerprint  # other weights compute other K/V: other caches


def test_int8_greedy_tokens_of_the_tiny_llama(int8_loaded, float32_loaded):
    """The engine's loop on the int8 model decodes what transformers' generate decodes on it (prefill through the
    dequantized matmul, decode through the kernel), and its logits stay close to float32's."""
    ids = prompt_ids(int8_loaded)
    reference = int8_loaded.model.generate(
        torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(ids):].tolist()
    finished = run(int8_loaded, ids)[-1]
    assert isinstance(finished, Finished) and finished.token_ids == reference
    with torch.inference_mode():
        sequence = torch.tensor([ids + reference])
        got, want = int8_loaded.model(sequence).logits[0], float32_loaded.model(sequence).logits[0]
    assert (got - want).abs().max() <= 0.01 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.95


def test_int8_is_cpu_only_and_only_for_full_weights():
    config = EngineConfig(cpu_weights="int8")
    assert config.cpu_weights == "int8"
    with pytest.raises(ValueError, match="cpu_weights must be one of int8, full"):
        EngineConfig(cpu_weights="int4")
    assert ConfigChange.between(EngineConfig(cpu_weights="full"), config).reload_model


def test_cli_option_reaches_the_config():
    import argparse

    from engine.cli.options import add_model_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    assert config_from_args(parser.parse_args([])).cpu_weights == EngineConfig.cpu_weights
    assert config_from_args(parser.parse_args(["--cpu-weights", "full"])).cpu_weights == "full"
    with pytest.raises(SystemExit):
        parser.parse_args(["--cpu-weights", "int4"])


def test_ask_loads_the_weights_the_option_names(tiny_model_dir, tmp_path):
    from tests.test_cli import engine

    doc = tmp_path / "doc.txt"
    doc.write_text("The light was first lit in 1865 by Anders Brekke.\n")
    for choice in ("full", "int8"):
        result = engine("ask", str(doc), "When was it lit?", "--model", str(tiny_model_dir), "--json",
                        "--max-new-tokens", "3", "--cpu-weights", choice)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["cpu_weights"] == choice


def test_a_chat_made_with_float32_weights_says_it_needs_them_under_int8(int8_loaded, float32_loaded):
    """int8 weights compute other K/V than float32's, so a chat made with one is readable, not continuable, with the
    other; the message names the weights, not 'another model' (the model's name is the same)."""
    from engine.errors import ChatError
    from engine.session import DocumentSession
    from engine.store import Store
    from tests.test_chat import EXACT, QUESTIONS, document, finished

    store = Store()
    chat = DocumentSession(float32_loaded, document(), EngineConfig(**EXACT), store=store).chat()
    finished(chat.ask(QUESTIONS[0]))
    reopened = DocumentSession(int8_loaded, document(), EngineConfig(**EXACT), store=store).chat(chat.id)
    assert "other weights" in reopened.problem and reopened.turns
    with pytest.raises(ChatError, match="other weights"):
        next(reopened.ask(QUESTIONS[1]))
