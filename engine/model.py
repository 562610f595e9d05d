"""Load a causal LM and its tokenizer (default model, local folder or hub id) and fingerprint it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from engine.config import EngineConfig
from engine.default_model import ensure_default_model
from engine.errors import ModelError
from engine.events import ProgressCallback, ProgressMeter
from engine.fingerprint import model_fingerprint, tokenizer_fingerprint
from engine.memory import device_free
from engine.sizing import FitReport, ModelShape, estimate_fit
from engine.weights import load_error

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


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

    @property
    def config(self):
        return self.model.config

    @property
    def shape(self) -> ModelShape:
        """What a document's cache size depends on (for engine.sizing.estimate_fit)."""
        config = self.model.config.get_text_config()
        heads = config.num_attention_heads
        return ModelShape(layers=config.num_hidden_layers, kv_heads=getattr(config, "num_key_value_heads", heads),
                          query_heads=heads, head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                          max_positions=self.max_positions, weight_bytes_per_value=self.dtype.itemsize,
                          kv_bytes_per_value=2, hidden_size=config.hidden_size)

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


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on GPUs that support it, else float16 on GPU; float32 on CPU (fastest there)."""
    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_model_path(spec: str, progress: ProgressCallback | None = None) -> Path:
    """Turn "default", a folder or a hub id into a local model folder (downloading where allowed)."""
    if spec == "default":
        return ensure_default_model(progress)
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
    return _download_from_hub(spec, progress)


def _download_from_hub(repo_id: str, progress: ProgressCallback | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    meter = ProgressMeter("download", 1, progress, "model")
    meter.update(0)
    patterns = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except RepositoryNotFoundError as error:
        raise ModelError(f"The hub has no model {repo_id!r} (or it is private).",
                         "Check the spelling, or log in with `hf auth login` for gated models.") from error
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise ModelError(
            f"Could not download {repo_id!r} from the Hugging Face Hub and it is not in the local cache "
            f"({str(error).splitlines()[0]}).",
            "Connect to the internet once to download it, or choose a local model folder.",
        ) from error
    meter.update(1)
    return folder


def load_model(spec: str = "default", device: str = "auto", dtype: str = "auto",
               progress: ProgressCallback | None = None, attn_implementation: str = "sdpa",
               config_overrides: dict | None = None) -> LoadedModel:
    """Load model `spec` ("default", a folder or a hub id) ready for inference. Never runs remote code.

    config_overrides: config attributes to replace at load (benchmarks stretch RoPE this way)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = resolve_model_path(spec, progress)
    meter = ProgressMeter("load", 1, progress, "model")
    meter.update(0)
    hf_logging.disable_progress_bar()  # we report our own progress
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=False, attn_implementation=attn_implementation,
            **(config_overrides or {}),
        )
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise load_error(path, error) from error
    except torch.OutOfMemoryError as error:
        raise ModelError(f"The model in {path} does not fit in {torch_device} memory.",
                         "Choose a smaller model, a smaller dtype, or the CPU device.") from error
    model.to(torch_device).eval()
    meter.update(1)
    if tokenizer.chat_template is None:
        raise ModelError(f"The tokenizer in {path} has no chat template, so Folio cannot format questions.",
                         "Use an instruction-tuned (chat) model.")
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=_display_name(spec, path), path=path,
        device=torch_device, dtype=torch_dtype, fingerprint=model_fingerprint(path),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        max_positions=int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 0),
        stop_token_ids=stop_token_ids(model, tokenizer),
    )


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
