"""The app's settings: the engine's config, the library's, and the app's own choices, stored as JSON in the
config folder. Defaults and validation belong to the engine's dataclasses; this module only holds them."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from app.backend import EngineConfig, LibraryConfig, settings_cost

if TYPE_CHECKING:
    from app.backend import SettingsCost

SETTINGS_FILE = "settings.json"
ATTENTION_CHOICES = (
    ("auto", "Automatic: the faster that fits (default)"),
    ("retrieval", "RetrievalAttention"),
    ("full", "Full attention"),
    ("window", "Sinks + window only (comparison)"),
)
CPU_WEIGHT_NAMES = {"int8": "int8 (default: faster on a CPU)", "full": "Full (in the precision above)"}
# The settings' names as the settings panel shows them (also in what a change costs), by field.
SETTING_LABELS = {
    "model": "Model", "device": "Device", "dtype": "Precision", "weights": "Weights",
    "cpu_weights": "Weights on the CPU", "attention": "Attention mode", "n_sink": "Sink tokens",
    "n_window": "Window size", "top_k": "Top-k retrieved", "attention_share": "Attention to retrieve",
    "search_effort": "Index search effort", "kv_dtype": "K/V precision", "max_new_tokens": "Max new tokens",
    "temperature": "Temperature",
}
# One line each for people who do not know the method: the settings panel's help lines and tooltips.
SETTING_HELP = {
    "weights": "4-bit and 8-bit weights let a larger model fit a smaller GPU (bitsandbytes).",
    "cpu_weights": "int8: about 2–4× faster answers on a CPU, which may differ slightly from float32's. Not used "
                   "on a GPU.",
    "attention": "Full reads the whole document for every word; retrieval only the parts that matter (faster on "
                 "long documents). Automatic picks.",
    "n_sink": "The document's first tokens, always in view: models lean on them. The default suits most models.",
    "n_window": "The last tokens before the question, always in view besides the parts looked up.",
    "top_k": "Tokens each attention head looks up per word it writes: more is closer to full attention, and slower.",
    "attention_share": "Heads look up tokens until these hold this share of their attention (at least top-k): "
                       "higher is closer to full attention, and slower.",
    "search_effort": "How thoroughly the index searches for those tokens: higher finds them more surely, and is "
                     "slower.",
}
ENGINE_FIELDS = frozenset(f.name for f in fields(EngineConfig))
LIBRARY_FIELDS = frozenset(f.name for f in fields(LibraryConfig))


def config_dir() -> Path:
    """Where settings live: FOLIO_CONFIG_DIR (tests) or the platform's user config folder."""
    return Path(os.environ.get("FOLIO_CONFIG_DIR") or platformdirs.user_config_dir("folio", appauthor=False))


@dataclass(frozen=True)
class AppSettings:
    """Everything the settings panel edits. engine and library validate themselves when made (ValueError)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    library: LibraryConfig = field(default_factory=LibraryConfig)
    gpu_runtime_auto_download: bool = True  # fetch the CUDA runtime when an NVIDIA GPU is found (app.runtime)
    hidden_notice: str = ""  # the GPU line the user hid ("No NVIDIA GPU found …"): not shown while it says the same

    def with_changes(self, **changes) -> AppSettings:
        """A copy with fields replaced by name, wherever they live: `with_changes(top_k=250, folder="/data")`."""
        engine = {k: v for k, v in changes.items() if k in ENGINE_FIELDS}
        library = {k: v for k, v in changes.items() if k in LIBRARY_FIELDS}
        own = {k: v for k, v in changes.items() if k not in ENGINE_FIELDS | LIBRARY_FIELDS}
        problems, made = [], {}
        for name, changed in (("engine", engine), ("library", library)):
            try:
                made[name] = dataclasses.replace(getattr(self, name), **changed)
            except ValueError as error:  # "Invalid settings: a; b." from either: name them all
                problems.append(str(error).removeprefix("Invalid settings: ").rstrip("."))
        if problems:
            raise ValueError("Invalid settings: " + "; ".join(problems) + ".")
        return dataclasses.replace(self, **made, **own)

    def validate(self) -> None:
        """Raise ValueError for what only the file system can tell (the engine's values are checked when made)."""
        folder = self.library.root
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"Invalid settings: the data folder {folder} is a file, not a folder.")


def load_settings(path: Path | None = None) -> tuple[AppSettings, str | None]:
    """(settings, warning): defaults when the file is missing; defaults and a warning when it is bad."""
    path = path or config_dir() / SETTINGS_FILE
    if not path.exists():
        return AppSettings(), None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        settings = AppSettings().with_changes(**_known_values(_flatten(raw)))
        settings.validate()
        return settings, None
    except (OSError, ValueError, TypeError) as error:
        return AppSettings(), f"The settings file {path} could not be used ({error}); using the defaults."


def _flatten(raw: dict) -> dict:
    """The file's values by field name. Files written before the engine and library sections existed were flat,
    with the data folder as data_folder and the budget as disk_budget_gb (decimal GB): both still load."""
    flat = {k: v for k, v in raw.items() if k not in ("engine", "library")}
    for section in ("engine", "library"):
        if isinstance(raw.get(section), dict):
            flat.update(raw[section])
    if "data_folder" in flat:
        flat.setdefault("folder", flat.pop("data_folder"))
    if "disk_budget_gb" in flat:
        gigabytes = _coerce("float", flat.pop("disk_budget_gb"))
        flat.setdefault("budget_bytes", int(gigabytes * 10**9))
    return flat


def _known_values(flat: dict) -> dict:
    types = {f.name: f.type for cls in (EngineConfig, LibraryConfig, AppSettings) for f in fields(cls)}
    return {k: _coerce(types[k], v) for k, v in flat.items() if k in types and k not in ("engine", "library")}


def _coerce(type_name: str, value):
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def save_settings(settings: AppSettings, path: Path | None = None) -> Path:
    """Write settings atomically (temporary file, then rename); returns the path."""
    path = path or config_dir() / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


@dataclass(frozen=True)
class ChangeImpact:
    """What applying new settings costs: the engine's part by part (SettingsCost)."""

    cost: SettingsCost

    @property
    def reload_model(self) -> bool:
        return self.cost.reloads_model

    @property
    def rebuild_caches(self) -> bool:
        """The documents' stored K/V are rebuilt: each is read again at its next question."""
        return self.cost.reads_again

    def describe(self) -> str:
        """What the engine's change costs, in sentences ("" when no engine setting changed)."""
        return self.cost.describe(SETTING_LABELS)

    def message(self) -> str:
        """describe() for the confirmation box where something is loaded or built again; else ""."""
        return self.cost.message(SETTING_LABELS)


def change_impact(old: AppSettings, new: AppSettings) -> ChangeImpact:
    return ChangeImpact(settings_cost(old.engine, new.engine))
