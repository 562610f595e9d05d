"""Quantized weights: a model's linear layers loaded in 8 or 4 bits through bitsandbytes, so an 8B model fits an
8-12 GB card. What each precision costs in memory is counted in engine.sizing (weights_bytes).

Why bitsandbytes (over torchao and HQQ): one wheel from the package index serves every CUDA version Folio's GPU
runtime installs (it carries its CUDA libraries and does not depend on the torch build), so the runtime fetches it
beside the CUDA torch (app/runtime); it runs 8-bit and 4-bit on the CPU too, so both are tested here; transformers
supports it directly (BitsAndBytesConfig). torchao's 4-bit needs a further kernel package and its compiled parts
follow torch's version; HQQ has no wheel on the index. 4-bit is NF4 with double-quantized scales (the QLoRA
format), 8-bit is LLM.int8 with its outlier columns kept in 16 bits.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import TYPE_CHECKING

from engine.errors import ModelError

if TYPE_CHECKING:
    import torch

QUANT_PACKAGE = "bitsandbytes"
QUANT_REQUIREMENT = "bitsandbytes==0.50.2"  # the wheel the GPU runtime fetches (app/runtime/requirements.py)
QUANTIZED = ("8bit", "4bit")


def quant_library_version() -> str | None:
    """The installed bitsandbytes version, or None."""
    try:
        return importlib.metadata.version(QUANT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_quantization(weights: str, device: torch.device, offloads_to_disk: bool = False) -> None:
    """Refuse, with the fix, what 8-bit and 4-bit loading cannot do here: without bitsandbytes installed, and with
    layers offloaded to disk (bitsandbytes keeps quantized layers in memory only)."""
    if weights not in QUANTIZED:
        return
    if quant_library_version() is None:
        where = ("Let Folio download the GPU runtime (Settings), which brings it" if device.type == "cuda"
                 else "Install it (pip install 'folio[quant]') or use full weights")
        raise ModelError(f"{weights} weights need the {QUANT_PACKAGE} library, which is not installed.",
                         f"{where}, or choose full weights.")
    if offloads_to_disk:
        raise ModelError(f"{weights} weights cannot be offloaded to disk: the model does not fit in device memory and "
                         "RAM together.", "Choose a smaller model or 4-bit weights, or free memory.")


def quantization_config(weights: str, compute_dtype: torch.dtype):
    """The transformers BitsAndBytesConfig for "8bit" or "4bit" (None for "full"). The output head stays unquantized
    (transformers keeps it in compute_dtype), as do embeddings and norms."""
    if weights not in QUANTIZED:
        return None
    from transformers import BitsAndBytesConfig

    import_bitsandbytes()
    if weights == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def import_bitsandbytes():
    """The bitsandbytes module, imported quietly: at import it warns that an optional CPU kernel package (fetched from
    the hub at run time) is absent; Folio never installs it (no code from the hub), so the warning is noise."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes

    return bitsandbytes


def precision_label(weights: str, dtype: torch.dtype | str) -> str:
    """What the status bar and the picker call a precision: "bfloat16", "4-bit (NF4)", "8-bit"."""
    return {"8bit": "8-bit", "4bit": "4-bit (NF4)"}.get(weights, str(dtype).removeprefix("torch."))


def held_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor the model holds, each storage once: parameters, buffers, and bitsandbytes' scales and
    tables (a 4-bit weight's quant_state, an 8-bit weight's SCB)."""
    tensors = [*model.parameters(), *model.buffers()]
    for parameter in list(tensors):
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code] + ([state.state2.absmax, state.state2.code, state.offset]
                                                     if state.nested else [])
        if getattr(parameter, "SCB", None) is not None:
            tensors.append(parameter.SCB)
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())
