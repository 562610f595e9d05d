"""What applying new engine settings costs, part by part: the model (kept or reloaded), each open document's stored
K/V (kept, or rebuilt: the document is read again) and its index (kept, rebuilt from the stored K/V, or not needed),
with the settings that cause it.

Derived from what decides each part when a document opens, not from a list of settings kept by hand:
- the K/V: engine.persist.CacheIdentity, computed by `CacheIdentity.of` over a stand-in for the model the settings
  would load (its name for the files it fingerprints, the quantization `variant_fingerprint` adds, the dtype the
  settings resolve to on this machine) and over the cache settings the session would use;
- the index: engine.persist.index_key over those cache settings (engine.session.cache_settings), None where the mode
  builds none (full attention, window);
- the model: reloaded where the app reloads it (engine.config.ConfigChange.reload_model).
"auto" attention counts as retrieval here: it answers a document with retrieval where that is faster or the whole
K/V does not fit (engine.attention_mode), and with full attention (no index) elsewhere.
A changed setting is named as a cause when changing it alone changes that part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from engine.attention_mode import AUTO, RETRIEVAL
from engine.cache import WINDOW_ONLY
from engine.config import RELOAD_MODEL_FIELDS, ConfigChange, EngineConfig
from engine.errors import ModelError
from engine.model import cpu_weights_used, resolve_device, resolve_dtype, variant_fingerprint
from engine.persist import CacheIdentity, index_key
from engine.session import cache_settings

KEPT, RELOADED, REBUILT, NOT_NEEDED = "kept", "reloaded", "rebuilt", "not needed"
FROM_KV = "rebuilt from the stored K/V"


@dataclass(frozen=True)
class PartCost:
    """verdict: KEPT or RELOADED (the model); KEPT or REBUILT (the K/V); KEPT, REBUILT (with the K/V), FROM_KV or
    NOT_NEEDED (the index). causes: the EngineConfig fields that cause it (for NOT_NEEDED: the attention mode)."""

    verdict: str
    causes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SettingsCost:
    """What a change of EngineConfig costs each open document (`settings_cost`). automatic: the new attention is
    "auto", so what is said of the index holds for the documents it answers with retrieval."""

    model: PartCost
    kv: PartCost
    index: PartCost
    changed: tuple[str, ...]
    automatic: bool = False

    @property
    def reloads_model(self) -> bool:
        return self.model.verdict == RELOADED

    @property
    def reads_again(self) -> bool:
        """The stored K/V are rebuilt: each open document is read again at its next question."""
        return self.kv.verdict == REBUILT

    @property
    def heavy(self) -> bool:
        """Something is loaded or built again (worth a confirmation)."""
        return (self.model.verdict == RELOADED or self.kv.verdict == REBUILT
                or self.index.verdict in (REBUILT, FROM_KV))

    def describe(self, labels: Mapping[str, str] | None = None) -> str:
        """What the change costs, in sentences; labels: a setting's name for people, by field (else the field)."""
        if not self.changed:
            return ""
        no_index = f"{self.index.causes[0]} attention needs no index" if self.index.verdict == NOT_NEEDED else ""
        if not self.heavy:
            return ("Applies at once, nothing is rebuilt: the model and the documents' stored K/V are kept, "
                    + (f"and {no_index}." if no_index else "and so are their indexes."))

        def named(causes: tuple[str, ...]) -> str:
            return ", ".join((labels or {}).get(c, c.replace("_", " ")) for c in causes)

        model = (f"The model is reloaded ({named(self.model.causes)})." if self.model.verdict == RELOADED
                 else "The model is kept.")
        if self.kv.verdict == REBUILT:
            kv = (f"Each open document is read again at its next question: its stored K/V are rebuilt "
                  f"({named(self.kv.causes)}).")
        else:
            kv = "The documents' stored K/V are kept: no document is read again."
        index = {
            KEPT: "Their indexes are kept.",
            REBUILT: "Their indexes are built again with them.",
            FROM_KV: (f"Their indexes are rebuilt from the stored K/V ({named(self.index.causes)}), unless the library "
                      "still holds one built with these settings."),
            NOT_NEEDED: no_index.capitalize() + ".",
        }[self.index.verdict]
        if self.automatic and self.index.verdict == FROM_KV:
            index += (" Automatic attention needs one only for the documents it answers with retrieval (long ones on "
                      "a CPU, or where the whole K/V do not fit).")
        return " ".join((model, kv, index))

    def message(self, labels: Mapping[str, str] | None = None) -> str:
        """describe() where something is loaded or built again, else ""."""
        return self.describe(labels) if self.heavy else ""


@dataclass(frozen=True)
class _Parts:
    cache_id: str  # the K/V's identity
    index: dict | None  # the index's key; None where the mode builds no index
    mode: str


def settings_cost(old: EngineConfig, new: EngineConfig) -> SettingsCost:
    """What changing the engine's settings from `old` to `new` costs each open document (module docstring)."""
    change = ConfigChange.between(old, new)
    before, after = _parts(old), _parts(new)
    caused = {name: _parts(_with(old, new, name)) for name in change.changed}
    model = PartCost(RELOADED, tuple(n for n in change.changed if n in RELOAD_MODEL_FIELDS)) \
        if change.reload_model else PartCost(KEPT)
    kv = PartCost(KEPT)
    if after.cache_id != before.cache_id:
        kv = PartCost(REBUILT, _causes(caused, lambda p: p.cache_id != before.cache_id, change.changed))
    if after.index is None:
        index = PartCost(NOT_NEEDED, (after.mode,))
    elif kv.verdict == REBUILT:
        index = PartCost(REBUILT, kv.causes)
    elif after.index != before.index:
        index = PartCost(FROM_KV, _causes(caused, lambda p: p.index is not None and p.index != before.index,
                                          change.changed))
    else:
        index = PartCost(KEPT)
    return SettingsCost(model, kv, index, change.changed, automatic=new.attention == AUTO)


def _with(old: EngineConfig, new: EngineConfig, name: str) -> EngineConfig:
    return dataclasses.replace(old, **{name: getattr(new, name)})


def _causes(caused: dict[str, _Parts], changes, changed: tuple[str, ...]) -> tuple[str, ...]:
    """The fields that change the part on their own; all the changed ones where none does alone."""
    return tuple(name for name, parts in caused.items() if changes(parts)) or changed


def _parts(config: EngineConfig) -> _Parts:
    """The K/V identity and index key a document would open with under `config` (its own files and prompt aside:
    they change only with the model's files, which the fingerprint's stand-in, the model setting, covers)."""
    try:
        device = resolve_device(config.device)
    except ModelError:  # a CUDA device asked for where there is none: the load will say so
        device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        dtype = f"{config.dtype} on cuda"
    else:
        dtype = resolve_dtype(config.dtype, device)
    cpu_weights = cpu_weights_used(config.cpu_weights, config.weights, device.type == "cpu")
    model = SimpleNamespace(name=config.model, dtype=dtype, tokenizer_fingerprint="",
                            fingerprint=variant_fingerprint(config.model, config.weights, cpu_weights, None),
                            tokenizer=SimpleNamespace(chat_template=""))
    mode = RETRIEVAL if config.attention == AUTO else config.attention
    settings = cache_settings(config, device, mode)
    identity = CacheIdentity.of(model, [], settings)
    index = None if settings.method == WINDOW_ONLY else index_key(identity.cache_id, settings)
    return _Parts(identity.cache_id, index, mode)
