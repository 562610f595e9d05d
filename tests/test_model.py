"""Model resolution, loading errors and the fingerprint used to validate caches."""

import shutil

import pytest
import torch

from engine.errors import ModelError
from engine.model import load_model, model_fingerprint, resolve_device, resolve_dtype


def test_loads_a_local_folder_on_cpu(tiny_loaded, tiny_model_dir):
    assert tiny_loaded.device == torch.device("cpu") and tiny_loaded.dtype == torch.float32
    assert tiny_loaded.max_positions == 2048
    assert tiny_loaded.stop_token_ids == {tiny_loaded.tokenizer.eos_token_id}
    assert next(tiny_loaded.model.parameters()).dtype == torch.float32


def test_dtype_override(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16 == next(loaded.model.parameters()).dtype


def test_automatic_device_and_dtype():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ModelError, match="no NVIDIA GPU"):
        resolve_device("cuda")


def test_fingerprint_is_stable_and_follows_weights_and_config(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    changed_weights = model_fingerprint(copy)
    assert changed_weights != model_fingerprint(tiny_model_dir)
    config = copy / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    assert model_fingerprint(copy) != changed_weights


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="was not found"):
        load_model(str(tmp_path / "no-such-model"))


def test_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_id_without_network_fails_with_a_message_not_a_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what a machine without network sees, instantly
    with pytest.raises(ModelError, match="Could not download 'someone/some-model'.*local model folder"):
        load_model("someone/some-model")


def test_the_device_in_words():
    from engine import describe_device

    assert describe_device("cpu") == "the CPU"
    expected = f"the GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "the CPU"
    assert describe_device("auto") == expected
