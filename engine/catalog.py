"""The model catalog: the models Folio offers by name (resources/models.json, data, not code), with what choosing one
needs: hub id, size, context and the RoPE scaling that reaches it, licence and gating, download size, and the
weights' memory per precision. Any other Llama-family hub id or local folder still loads; the catalog only names
the ones Folio has checked.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import WEIGHTS
from engine.errors import ModelError
from engine.sizing import ModelShape

CATALOG_FILE = "models.json"
SCHEMA_VERSION = 1
ARCHITECTURE_FIELDS = {"layers": int, "hidden_size": int, "intermediate_size": int, "query_heads": int,
                       "kv_heads": int, "head_dim": int, "vocab_size": int, "tied_embeddings": bool, "qkv_bias": bool}
ENTRY_FIELDS = {"id": str, "name": str, "hub_id": str, "bundled": bool, "parameters": int, "context": int,
                "native_context": int, "rope_scaling": (dict, type(None)), "licence": str, "licence_url": str,
                "gated": bool, "download_bytes": int, "weights_bytes": dict, "architecture": dict, "summary": str}
ROPE_TYPES = ("yarn", "llama3", "linear", "dynamic")


@dataclass(frozen=True)
class CatalogEntry:
    """One model of the catalog. `spec` is what EngineConfig.model takes for it ("default" for the bundled one)."""

    id: str
    name: str
    hub_id: str
    bundled: bool
    parameters: int
    context: int  # the positions Folio uses (the native context, or what the RoPE scaling reaches)
    native_context: int  # max_position_embeddings as the model ships
    rope_scaling: dict | None  # rope_parameters to set at load (beside the model's own rope_theta), or None
    licence: str
    licence_url: str
    gated: bool  # the hub serves the files only after the licence is accepted, to a token
    download_bytes: int
    weights_bytes: dict[str, int]  # per WEIGHTS precision: "full" in bfloat16, "8bit", "4bit"
    shape: ModelShape
    summary: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def spec(self) -> str:
        return "default" if self.bundled else self.hub_id

    def load_overrides(self, rope_parameters: dict | None) -> dict:
        """Config attributes to set at load: the catalog's RoPE scaling merged into the model's own `rope_parameters`
        (its rope_theta stays), and the context it reaches. {} for a model used as it ships."""
        if not self.rope_scaling:
            return {}
        return {"rope_parameters": {**(rope_parameters or {}), **self.rope_scaling},
                "max_position_embeddings": self.context}


def catalog_path() -> Path:
    """resources/models.json: beside the packages from source, under sys._MEIPASS in the frozen app."""
    frozen_root = getattr(sys, "_MEIPASS", None)
    root = Path(frozen_root) if frozen_root else Path(__file__).resolve().parents[1]
    return root / "resources" / CATALOG_FILE


@functools.cache
def load_catalog(path: Path | None = None) -> tuple[CatalogEntry, ...]:
    """The catalog's entries in file order; ModelError naming every problem of a damaged or invalid file."""
    path = path or catalog_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"The model catalog {path} could not be read ({error}).",
                         "Reinstall Folio, or choose a model folder or hub id instead.") from error
    return parse_catalog(raw, str(path))


def parse_catalog(raw: object, where: str = "the catalog") -> tuple[CatalogEntry, ...]:
    """Entries from the catalog's JSON; ModelError listing every schema problem."""
    problems: list[str] = []
    if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION or not isinstance(
            raw.get("models"), list):
        raise ModelError(f"{where} is not a Folio model catalog (schema_version {SCHEMA_VERSION} with a models list).",
                         "Reinstall Folio.")
    entries = []
    for number, item in enumerate(raw["models"]):
        entry = _parse_entry(item, f"entry {number}", problems)
        if entry is not None:
            entries.append(entry)
    ids = [e.id for e in entries] + [e.hub_id for e in entries]
    problems += [f"{name!r} appears twice" for name in sorted({i for i in ids if ids.count(i) > 1})]
    if sum(e.bundled for e in entries) != 1:
        problems.append("exactly one entry must be the bundled model")
    if problems:
        raise ModelError(f"{where} is invalid: " + "; ".join(problems) + ".", "Reinstall Folio.")
    return tuple(entries)


def _parse_entry(item: object, label: str, problems: list[str]) -> CatalogEntry | None:
    if not isinstance(item, dict):
        problems.append(f"{label} is not an object")
        return None
    label = f"{item.get('id', label)}"
    before = len(problems)
    _check_fields(item, ENTRY_FIELDS, label, problems)
    if len(problems) > before:
        return None
    architecture = item["architecture"]
    _check_fields(architecture, ARCHITECTURE_FIELDS, f"{label}.architecture", problems)
    if set(item["weights_bytes"]) != set(WEIGHTS) or not all(
            isinstance(v, int) and v > 0 for v in item["weights_bytes"].values()):
        problems.append(f"{label}.weights_bytes must give a positive byte count for each of {', '.join(WEIGHTS)}")
    rope = item["rope_scaling"]
    if rope is not None and (rope.get("rope_type") not in ROPE_TYPES or not isinstance(rope.get("factor"), int | float)
                             or rope.get("original_max_position_embeddings") != item["native_context"]):
        problems.append(f"{label}.rope_scaling needs rope_type ({', '.join(ROPE_TYPES)}), factor and "
                        "original_max_position_embeddings equal to native_context")
    if rope is not None and item["context"] != round(item["native_context"] * rope.get("factor", 0)):
        problems.append(f"{label}.context must be native_context x the RoPE factor")
    if rope is None and item["context"] > item["native_context"]:
        problems.append(f"{label}.context is beyond native_context without a RoPE scaling to reach it")
    for name in ("parameters", "context", "native_context", "download_bytes"):
        if item[name] <= 0:
            problems.append(f"{label}.{name} must be positive")
    if "/" not in item["hub_id"]:
        problems.append(f"{label}.hub_id must be owner/name")
    if len(problems) > before:
        return None
    shape = ModelShape(layers=architecture["layers"], kv_heads=architecture["kv_heads"],
                       query_heads=architecture["query_heads"], head_dim=architecture["head_dim"],
                       max_positions=item["context"], hidden_size=architecture["hidden_size"],
                       intermediate_size=architecture["intermediate_size"], vocab_size=architecture["vocab_size"],
                       tied_embeddings=architecture["tied_embeddings"], qkv_bias=architecture["qkv_bias"])
    known = set(ENTRY_FIELDS)
    return CatalogEntry(item["id"], item["name"], item["hub_id"], item["bundled"], item["parameters"], item["context"],
                        item["native_context"], rope, item["licence"], item["licence_url"], item["gated"],
                        item["download_bytes"], dict(item["weights_bytes"]), shape, item["summary"],
                        {k: v for k, v in item.items() if k not in known})


def _check_fields(item: dict, fields: dict, label: str, problems: list[str]) -> None:
    for name, kind in fields.items():
        if name not in item:
            problems.append(f"{label} has no {name}")
        elif not isinstance(item[name], kind) or (kind is int and isinstance(item[name], bool)):
            problems.append(f"{label}.{name} has the wrong type")


def find_entry(spec: str, entries: tuple[CatalogEntry, ...] | None = None) -> CatalogEntry | None:
    """The entry a model spec names: its id, its hub id (any case), or "default" for the bundled model."""
    entries = entries if entries is not None else load_catalog()
    wanted = spec.strip().lower()
    for entry in entries:
        if wanted in (entry.id.lower(), entry.hub_id.lower()) or (wanted == "default" and entry.bundled):
            return entry
    return None
