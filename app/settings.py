"""The app's settings: one dataclass, validated (reusing EngineConfig), stored as JSON in the config folder."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import platformdirs

from engine.config import EngineConfig

SETTINGS_FILE = "settings.json"
ATTENTION_CHOICES = (
    ("retrieval", "RetrievalAttention (default)"),
    ("full", "Full attention (comparison)"),
    ("window", "Sinks + window only (comparison)"),
)


def config_dir() -> Path:
    """Where settings live: FOLIO_CONFIG_DIR (tests) or the platform's user config folder."""
    return Path(os.environ.get("FOLIO_CONFIG_DIR") or platformdirs.user_config_dir("folio", appauthor=False))


def default_data_dir() -> str:
    return os.environ.get("FOLIO_DATA_DIR") or platformdirs.user_data_dir("folio", appauthor=False)


@dataclass(frozen=True)
class AppSettings:
    """Everything the settings panel edits. Engine fields mirror engine.config.EngineConfig."""

    model: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "retrieval"
    n_sink: int = 128
    n_window: int = 512
    top_k: int = 100
    search_effort: int = 100
    max_new_tokens: int = 512
    temperature: float = 0.0
    data_folder: str = field(default_factory=default_data_dir)
    disk_budget_gb: float = 50.0  # the store's default budget too
    gpu_runtime_auto_download: bool = True  # fetch the CUDA runtime when an NVIDIA GPU is found (app.runtime)

    def engine_config(self) -> EngineConfig:
        """The EngineConfig these settings describe (raises ValueError with a readable message)."""
        shared = {f.name for f in fields(EngineConfig)} & {f.name for f in fields(self)}
        return EngineConfig(**{name: getattr(self, name) for name in shared})

    def validate(self) -> None:
        """Raise ValueError naming every problem, in words for people."""
        problems: list[str] = []
        try:
            self.engine_config()
        except ValueError as error:
            problems.append(str(error).removeprefix("Invalid settings: ").rstrip("."))
        if not self.model.strip():
            problems.append("model must be 'default', a model folder or a hub id")
        if not self.data_folder.strip():
            problems.append("data folder must be set")
        elif Path(self.data_folder).expanduser().exists() and not Path(self.data_folder).expanduser().is_dir():
            problems.append(f"data folder {self.data_folder} is a file, not a folder")
        if self.disk_budget_gb <= 0:
            problems.append("disk budget must be more than 0 GB")
        if self.max_new_tokens > 32768:
            problems.append("max new tokens must be at most 32,768")
        if problems:
            raise ValueError("Invalid settings: " + "; ".join(problems) + ".")


def load_settings(path: Path | None = None) -> tuple[AppSettings, str | None]:
    """(settings, warning): defaults when the file is missing; defaults and a warning when it is bad."""
    path = path or config_dir() / SETTINGS_FILE
    if not path.exists():
        return AppSettings(), None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        known = {f.name: f for f in dataclasses.fields(AppSettings)}
        values = {k: _coerce(known[k].type, v) for k, v in raw.items() if k in known}
        settings = AppSettings(**values)
        settings.validate()
        return settings, None
    except (OSError, ValueError, TypeError) as error:
        return AppSettings(), f"The settings file {path} could not be used ({error}); using the defaults."


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


RELOAD_MODEL_FIELDS = ("model", "device", "dtype")
REBUILD_CACHE_FIELDS = ("attention", "n_sink", "n_window", "top_k", "search_effort")


@dataclass(frozen=True)
class ChangeImpact:
    """What applying new settings costs."""

    reload_model: bool
    rebuild_caches: bool
    changed: tuple[str, ...]

    def message(self) -> str:
        """A sentence for the confirmation box; empty when nothing heavy happens."""
        if self.reload_model:
            return ("Changing the model, device or dtype reloads the model and rebuilds the cache of every "
                    "open document (each document is read again at its next question).")
        if self.rebuild_caches:
            return ("Changing the attention mode, sink tokens, window, top-k or search effort rebuilds the "
                    "cache of every open document (each document is read again at its next question).")
        return ""


def change_impact(old: AppSettings, new: AppSettings) -> ChangeImpact:
    changed = tuple(f.name for f in dataclasses.fields(AppSettings) if getattr(old, f.name) != getattr(new, f.name))
    return ChangeImpact(reload_model=any(name in changed for name in RELOAD_MODEL_FIELDS),
                        rebuild_caches=any(name in changed for name in REBUILD_CACHE_FIELDS), changed=changed)
