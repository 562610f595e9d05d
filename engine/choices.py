"""Which catalog models suit this machine: per model, whether it is installed and what fits (the fit check per precision
and context length: device memory, RAM, disk for the download), and the one Folio recommends. The model picker, the
`models list` command and the docs' "which model on which card" table all read it from here.

The recommendation: on a GPU, among the models that fit at their whole context (up to 128K tokens) in some precision,
the one not gated, then with the most parameters, in the highest precision that fits; where none fits whole, the same
at 32K. On a CPU, the largest up to CPU_MAX_PARAMETERS whose full weights fit in RAM at 32K (larger models, and
quantized weights, answer too slowly there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine import hub, memory
from engine.catalog import CatalogEntry, load_catalog
from engine.config import WEIGHTS, EngineConfig
from engine.default_model import is_default_model_ready
from engine.quantize import QUANTIZED, quant_library_version
from engine.sizing import CUDA_CONTEXT_BYTES, Machine, ModelFit, model_fit
from engine.units import GIB, format_bytes

CONTEXTS = (32768, 131072)  # the context lengths the picker and the card table show
CPU_MAX_PARAMETERS = 2 * 10**9
PRECISION_RANK = {"full": 2, "8bit": 1, "4bit": 0}


@dataclass(frozen=True)
class ModelChoice:
    """One catalog model on one machine: installed or not, and its fit per precision and context length."""

    entry: CatalogEntry
    installed: bool
    fits: tuple[ModelFit, ...]
    recommended_weights: str | None = None  # set on the recommended model only

    def fit(self, weights: str, tokens: int) -> ModelFit | None:
        return next((f for f in self.fits if f.weights == weights and f.tokens == tokens), None)

    def lengths(self) -> list[int]:
        """The document lengths checked (tokens: each context length the model reaches, less the answer room)."""
        return sorted({f.tokens for f in self.fits})

    def best_weights(self, tokens: int) -> str | None:
        """The highest precision that fits a document of `tokens` tokens, or None."""
        fitting = [f.weights for f in self.fits if f.tokens == tokens and f.fits]
        return max(fitting, key=PRECISION_RANK.__getitem__) if fitting else None

    @property
    def recommended(self) -> bool:
        return self.recommended_weights is not None


def document_lengths(entry: CatalogEntry, reserved: int = EngineConfig.max_new_tokens) -> list[int]:
    """The document sizes a model is checked at: each of CONTEXTS it reaches (and its own context if shorter), less
    the tokens kept for the answer."""
    return [min(c, entry.context) - reserved for c in sorted({min(c, entry.context) for c in CONTEXTS})]


def machine_now(models_folder=None) -> Machine:
    """This machine: its first GPU's free memory (when torch sees one; with what this process holds there, which a
    change of model frees), available RAM, free disk for downloads."""
    ram = memory.available_ram() or 0
    disk = memory.free_disk(models_folder or hub.hub_cache_dir())
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(0)
            name = f"{torch.cuda.get_device_name(0)} ({format_bytes(total)})"
            return Machine("cuda", int(free + torch.cuda.memory_reserved(0)), ram, disk, name)
    except (ImportError, RuntimeError):
        pass
    return Machine("cpu", 0, ram, disk, f"CPU ({format_bytes(ram)} RAM available)")


def card(gigabytes: int, ram_bytes: int = 0) -> Machine:
    """An idle NVIDIA card of `gigabytes` GB as marketed (GiB in fact), less what the CUDA context takes."""
    return Machine("cuda", gigabytes * GIB - CUDA_CONTEXT_BYTES, ram_bytes, None, f"{gigabytes} GB card")


def is_installed(entry: CatalogEntry) -> bool:
    """Whether the model is on this machine (the converted default model, or a complete hub snapshot)."""
    return is_default_model_ready() if entry.bundled else hub.installed_folder(entry.hub_id) is not None


def model_choices(machine: Machine, entries: Sequence[CatalogEntry] | None = None,
                  installed: Callable[[CatalogEntry], bool] = is_installed,
                  quantization_available: bool | None = None) -> list[ModelChoice]:
    """Every catalog model's fit on `machine`, with the recommended one marked."""
    entries = load_catalog() if entries is None else entries
    if quantization_available is None:
        quantization_available = quant_library_version() is not None
    dtype_bytes = 4 if machine.device == "cpu" else 2  # EngineConfig.dtype "auto": float32 on a CPU, 16-bit on a GPU
    choices = []
    for entry in entries:
        here = installed(entry)
        fits = []
        for weights in WEIGHTS:
            for tokens in document_lengths(entry):
                fit = model_fit(entry.shape, weights, tokens, machine, 0 if here else entry.download_bytes,
                                dtype_bytes=dtype_bytes if weights == "full" else 2)
                if weights in QUANTIZED and not quantization_available:
                    fit = ModelFit(fit.weights, fit.tokens, fit.weights_bytes, fit.device_bytes, fit.ram_bytes,
                                   fit.download_bytes, (*fit.problems, "needs the bitsandbytes library"))
                fits.append(fit)
        choices.append(ModelChoice(entry, here, tuple(fits)))
    return _mark_recommended(choices, machine)


def _mark_recommended(choices: list[ModelChoice], machine: Machine) -> list[ModelChoice]:
    if machine.device == "cpu":
        candidates = [(c, "full" if c.fit("full", c.lengths()[0]).fits else None)
                      for c in choices if c.entry.parameters <= CPU_MAX_PARAMETERS]
    else:
        candidates = [(c, c.best_weights(c.lengths()[-1])) for c in choices]
        if not any(weights for _, weights in candidates):
            candidates = [(c, c.best_weights(c.lengths()[0])) for c in choices]
    fitting = [(c, w) for c, w in candidates if w is not None]
    if not fitting:
        return choices
    best, weights = max(fitting, key=lambda cw: (not cw[0].entry.gated, cw[0].entry.parameters,
                                                  PRECISION_RANK[cw[1]]))
    return [ModelChoice(c.entry, c.installed, c.fits, weights if c is best else None) for c in choices]


def card_table(cards: Sequence[int] = (8, 12, 16, 24), entries: Sequence[CatalogEntry] | None = None
               ) -> list[dict]:
    """Rows of "which model on which card": per catalog model, card size and context, the highest precision that
    fits (computed by the fit check, RAM not limiting), its device memory, and the recommended model per card."""
    rows = []
    for gigabytes in cards:
        choices = model_choices(card(gigabytes), entries, installed=lambda _: True, quantization_available=True)
        for choice in choices:
            for tokens in choice.lengths():
                weights = choice.best_weights(tokens)
                fit = choice.fit(weights, tokens) if weights else min(
                    (f for f in choice.fits if f.tokens == tokens), key=lambda f: f.device_bytes)
                rows.append({"card_gb": gigabytes, "model": choice.entry.name, "tokens": tokens,
                             "weights": weights or "—", "device_gib": round(fit.device_bytes / GIB, 2),
                             "recommended": choice.recommended and weights == choice.recommended_weights})
    return rows
