"""Load a causal LM and its tokenizer (default model, catalog id, local folder or hub id), with quantized weights and
layers split across devices where asked, and fingerprint it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from engine import hub
from engine.catalog import find_entry
from engine.config import EngineConfig
from engine.cpu_weights import quantize_linear_layers
from engine.default_model import ensure_default_model
from engine.errors import ModelError
from engine.events import CancelToken, ProgressCallback, ProgressMeter
from engine.fingerprint import model_fingerprint, tokenizer_fingerprint
from engine.memory import available_ram, device_free
from engine.quantize import check_quantization, quantization_config
from engine.sizing import FitReport, ModelShape, estimate_fit, weights_bytes
from engine.weights import load_error

HUB_ID = hub.HUB_ID
LONG_DOCUMENT_TOKENS = 131072  # device room kept for a document this long when a model is split across devices


@dataclass
class LoadedModel:
    """A ready model: weights on `device` in `dtype`, its tokenizer and identity."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    tokenizer_fingerprint: str
    max_positions: int
    stop_token_ids: set[int] = field(default_factory=set)
    weights: str = "full"  # EngineConfig.weights: "full", "8bit" or "4bit"
    cpu_weights: str = "full"  # "int8" where the linear layers were made int8 at load (EngineConfig.cpu_weights)
    layer_devices: list[torch.device] = field(default_factory=list)  # per decoder layer (see layer_devices)

    @property
    def config(self):
        return self.model.config

    @property
    def shape(self) -> ModelShape:
        """What a document's cache size depends on (for engine.sizing.estimate_fit)."""
        return shape_from_config(self.model.config, self.dtype, self.max_positions)

    @property
    def cache_devices(self) -> list[torch.device]:
        """The device of each layer's static set: its layer's device (one device unless accelerate split the model)."""
        return self.layer_devices or [self.device] * self.model.config.get_text_config().num_hidden_layers

    def fit(self, tokens: int, config: EngineConfig, data_folder: str | Path, disk_budget_bytes: int,
            used_disk_bytes: int = 0, measure_free: bool = True) -> FitReport:
        """Whether a document prefix of `tokens` tokens fits this model under `config`: its context, and the RAM,
        device memory and disk its cache takes. measure_free=False skips the free RAM and device checks (for a
        document already open)."""
        return estimate_fit(self.shape, tokens, config.max_new_tokens, config.attention, config.n_sink,
                            config.n_window, self.device.type == "cpu", data_folder, disk_budget_bytes,
                            used_disk_bytes=used_disk_bytes, available_ram=None if measure_free else 0,
                            available_device=device_free(self.device) if measure_free else 0)


def resolve_device(spec: str = "auto") -> torch.device:
    """"auto" picks CUDA when present, else CPU; "cuda" without a GPU is a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("A CUDA device was asked for, but PyTorch sees no NVIDIA GPU here.",
                         "Choose the CPU device (or 'auto'), or install the CUDA build of PyTorch.")
    return device


def describe_device(spec: str = "auto") -> str:
    """The device `spec` ("auto", "cpu", "cuda", "cuda:1") means here, in words: "the CPU" or "the GPU (NVIDIA …)"."""
    try:
        device = resolve_device(spec)
    except ModelError:  # a GPU asked for and none here: loading says so
        return "the GPU"
    if device.type != "cuda":
        return "the CPU"
    return f"the GPU ({torch.cuda.get_device_name(device)})"


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on GPUs that support it, else float16 on GPU; float32 on CPU (fastest there)."""
    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_model_path(spec: str, progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Path:
    """Turn "default", a catalog id, a folder or a hub id into a local model folder (downloading where allowed)."""
    if spec == "default":
        return ensure_default_model(progress)
    entry = find_entry(spec)
    if entry is not None:
        if entry.bundled:
            return ensure_default_model(progress)
        spec = entry.hub_id
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"The folder {path} has no config.json, so it is not a model folder.",
                             "Choose the folder that holds config.json and the weight files.")
        return path
    if path.exists() or not HUB_ID.match(spec):
        raise ModelError(f"Model {spec!r} was not found: it is neither a model folder nor a hub id.",
                         "Choose a folder with config.json, a hub id like 'Qwen/Qwen2.5-7B-Instruct', "
                         "or 'default' for the bundled model.")
    return hub.pull_model(spec, progress, cancel)


def load_model(spec: str = "default", device: str = "auto", dtype: str = "auto",
               progress: ProgressCallback | None = None, attn_implementation: str = "sdpa",
               config_overrides: dict | None = None, weights: str = "full", max_memory: dict | None = None,
               offload_folder: str | Path | None = None, cancel: CancelToken | None = None,
               cpu_weights: str = EngineConfig.cpu_weights) -> LoadedModel:
    """Load model `spec` ("default", a catalog id, a folder or a hub id) ready for inference. Never runs remote code.

    weights: "full", or "8bit"/"4bit" (engine.quantize). cpu_weights: "int8" makes a CPU model's linear layers int8
    with float32 scales (engine.cpu_weights) where weights is "full" and the model is not split; "full" keeps them in
    `dtype`. A catalog model gets the RoPE scaling its entry names.
    Placement: one device, except for device "auto" on a GPU whose free memory the weights do not fit beside room for
    a long document's cache: then accelerate's device_map spreads the layers over the GPUs and the CPU. max_memory
    (accelerate's {device: bytes}, with offload_folder for "disk") forces such a split.
    config_overrides: config attributes to replace at load (benchmarks stretch RoPE this way)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_quantization(weights, torch_device)
    path = resolve_model_path(spec, progress, cancel)
    meter = ProgressMeter("load", 1, progress, "model")
    meter.update(0)
    hf_logging.disable_progress_bar()  # we report our own progress
    entry = find_entry(spec)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        overrides = {**(entry.load_overrides(getattr(config, "rope_parameters", None)) if entry else {}),
                     **(config_overrides or {})}
        placement = _placement(config, weights, torch_device, torch_dtype, device, max_memory, offload_folder)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=False, attn_implementation=attn_implementation,
            quantization_config=quantization_config(weights, torch_dtype), **placement, **overrides,
        )
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        if weights != "full" and "dispatched on the CPU or the disk" in str(error):
            check_quantization(weights, torch_device, offloads_to_disk=True)
        if "offload" in str(error) and max_memory is None:
            raise ModelError(f"The model in {path} does not fit in device memory and RAM together.",
                             "Choose a smaller model or 4-bit weights, or close other programs.") from error
        raise load_error(path, error) from error
    except torch.OutOfMemoryError as error:
        raise ModelError(f"The model in {path} does not fit in {torch_device} memory.",
                         "Choose a smaller model, 4-bit weights, a smaller dtype, or the CPU device.") from error
    model.eval()
    whole_on_cpu = torch_device.type == "cpu" and max_memory is None  # not split by accelerate (layers on disk)
    cpu_weights = cpu_weights_used(cpu_weights, weights, whole_on_cpu)
    if cpu_weights == "int8":
        quantize_linear_layers(model)
    devices = layer_devices(model)
    check_quantization(weights, torch_device, offloads_to_disk="disk" in (getattr(model, "hf_device_map", None)
                                                                          or {}).values())
    meter.update(1)
    if tokenizer.chat_template is None:
        raise ModelError(f"The tokenizer in {path} has no chat template, so Folio cannot format questions.",
                         "Use an instruction-tuned (chat) model.")
    fingerprint = variant_fingerprint(model_fingerprint(path), weights, cpu_weights, overrides)
    return LoadedModel(
        model=model, tokenizer=tokenizer, path=path,
        name=entry.hub_id if entry is not None and not entry.bundled else _display_name(spec, path),
        device=devices[0] if devices else torch_device, dtype=torch_dtype, fingerprint=fingerprint,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        max_positions=int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 0),
        stop_token_ids=stop_token_ids(model, tokenizer), weights=weights, layer_devices=devices,
        cpu_weights=cpu_weights,
    )


def cpu_weights_used(cpu_weights: str, weights: str, whole_on_cpu: bool) -> str:
    """The cpu_weights a model is loaded with: "int8" only where asked, for full weights on a CPU that holds the whole
    model (not split by accelerate); else "full"."""
    return "int8" if cpu_weights == "int8" and weights == "full" and whole_on_cpu else "full"


def variant_fingerprint(fingerprint: str, weights: str, cpu_weights: str, overrides: dict | None) -> str:
    """The model's fingerprint with what changes its computed K/V besides its files: quantized weights (`weights`,
    the `cpu_weights` used) and config overrides. Caches made without them do not apply."""
    variant = {k: v for k, v in (("weights", weights), ("cpu_weights", cpu_weights), ("config", overrides))
               if v and v != "full"}
    if not variant:
        return fingerprint
    return hashlib.sha256((fingerprint + json.dumps(variant, sort_keys=True)).encode()).hexdigest()


def _placement(config, weights: str, device: torch.device, dtype: torch.dtype, device_spec: str,
               max_memory: dict | None, offload_folder: str | Path | None) -> dict:
    """from_pretrained's device_map (and max_memory, offload_folder): the whole model on `device`, or accelerate's
    split where max_memory asks for one or where device "auto" finds a GPU too small for the weights."""
    if max_memory is not None:
        return {"device_map": "auto", "max_memory": max_memory,
                **({"offload_folder": str(offload_folder)} if offload_folder else {})}
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        if device_spec == "auto":
            split = _gpu_split(config, weights, dtype)
            if split is not None:
                return {"device_map": "auto", "max_memory": split}
    return {"device_map": {"": device}}


def _gpu_split(config, weights: str, dtype: torch.dtype) -> dict | None:
    """accelerate's max_memory when the weights and a long document's device memory do not fit GPU 0's free memory:
    every GPU less that room, then the CPU; None when they fit (or the model's size cannot be counted)."""
    shape = shape_from_config(config, dtype)
    try:
        need = weights_bytes(shape, weights, dtype.itemsize)
    except ValueError:
        return None
    tokens = max(1, min(shape.max_positions or 32768, LONG_DOCUMENT_TOKENS))
    room = estimate_fit(shape, tokens, 0, "retrieval", EngineConfig.n_sink, EngineConfig.n_window, False, ".",
                        1 << 62, available_ram=0, available_device=0).device_bytes
    free = [device_free(torch.device("cuda", i)) or 0 for i in range(torch.cuda.device_count())]
    if need + room <= free[0]:
        return None
    return {**{i: max(0, f - room) for i, f in enumerate(free)}, "cpu": int(0.9 * (available_ram() or 0))}


def layer_devices(model: PreTrainedModel) -> list[torch.device]:
    """The device each decoder layer computes on: where accelerate's hook runs it (a split model's layers kept in CPU
    memory or on disk run on their execution device), else where its weights are. [] for a model without `layers`."""
    layers = getattr(getattr(model, "model", None), "layers", None) or []
    devices = []
    for layer in layers:
        execution = getattr(getattr(layer, "_hf_hook", None), "execution_device", None)
        if execution is None:
            execution = next(layer.parameters()).device
        devices.append(torch.device("cuda", execution) if isinstance(execution, int) else torch.device(execution))
    return devices


def shape_from_config(config, dtype: torch.dtype, max_positions: int | None = None) -> ModelShape:
    """A model config's shape, for the cache and weights arithmetic of engine.sizing."""
    config = config.get_text_config()
    heads = config.num_attention_heads
    return ModelShape(layers=config.num_hidden_layers, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                      query_heads=heads, head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                      max_positions=max_positions if max_positions is not None
                      else int(getattr(config, "max_position_embeddings", 0) or 0),
                      weight_bytes_per_value=dtype.itemsize, kv_bytes_per_value=2, hidden_size=config.hidden_size,
                      intermediate_size=getattr(config, "intermediate_size", 0) or 0,
                      vocab_size=getattr(config, "vocab_size", 0) or 0,
                      tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
                      qkv_bias=bool(getattr(config, "attention_bias", False) or config.model_type == "qwen2"))


def _display_name(spec: str, path: Path) -> str:
    if spec == "default":
        return path.name
    return spec if HUB_ID.match(spec) and not Path(spec).exists() else path.name


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Token ids that end an answer: the generation config's eos ids plus the tokenizer's."""
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


def set_threads(threads: int) -> None:
    """Use `threads` CPU threads for torch (0 = all cores)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
