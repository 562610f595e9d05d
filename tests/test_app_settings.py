"""app.settings: defaults, validation messages, JSON round trip, and what a change rebuilds (no Qt)."""

from __future__ import annotations

import json

import pytest

from app.settings import AppSettings, change_impact, config_dir, load_settings, save_settings
from engine import GIB, EngineConfig


def test_defaults_use_auto_attention_and_the_default_model():
    settings = AppSettings()
    assert settings.engine.model == "default" and settings.engine.attention == "auto"
    settings.validate()
    assert settings.engine == EngineConfig()  # the engine's defaults are the app's: one home


def test_round_trip_through_the_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLIO_CONFIG_DIR", str(tmp_path / "config"))
    settings = AppSettings().with_changes(attention="full", top_k=250, temperature=0.7, folder=str(tmp_path / "d"))
    path = save_settings(settings)
    assert path.parent == config_dir() == tmp_path / "config"
    assert load_settings() == (settings, None)


@pytest.mark.parametrize(("change", "words"), [
    ({"top_k": 0}, "top_k must be at least 1"),
    ({"attention_share": 1.5}, "attention_share must be between 0"),
    ({"attention": "magic"}, "attention must be one of"),
    ({"temperature": -1.0}, "temperature must be 0"),
    ({"budget_bytes": 0}, "disk budget must be more than 0 bytes"),
    ({"device": "tpu"}, "device must be one of"),
])
def test_validation_messages_are_readable(change, words):
    with pytest.raises(ValueError, match="Invalid settings") as error:
        AppSettings().with_changes(**change).validate()
    assert words in str(error.value)


def test_bad_file_falls_back_to_defaults_with_a_warning(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"top_k": "many"}))
    settings, warning = load_settings(path)
    assert settings == AppSettings() and "could not be used" in warning
    path.write_text("{not json")
    assert load_settings(path)[1]


def test_a_flat_settings_file_from_an_earlier_version_still_loads(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"model": "default", "top_k": 300, "max_new_tokens": 256, "data_folder": str(tmp_path),
                                "disk_budget_gb": 20.0, "gpu_runtime_auto_download": False}))
    settings, warning = load_settings(path)
    assert warning is None
    assert (settings.engine.top_k, settings.engine.max_new_tokens) == (300, 256)
    assert settings.library.folder == str(tmp_path) and settings.library.budget_bytes == 20 * 10**9
    assert settings.gpu_runtime_auto_download is False


def test_the_default_disk_budget_is_the_engine_store_default_in_binary_units():
    assert AppSettings().library.budget_bytes == 50 * GIB


def test_change_impact_says_what_each_change_costs_in_the_panel_s_words():
    base = AppSettings()
    for quick in ({"temperature": 0.5}, {"top_k": 250}, {"search_effort": 50}, {"attention_share": 0.5}):
        impact = change_impact(base, base.with_changes(**quick))
        assert impact.message() == "" and "nothing is rebuilt" in impact.describe()
    model = change_impact(base, base.with_changes(model="/models/x"))
    assert model.reload_model and model.rebuild_caches
    assert "The model is reloaded (Model)" in model.message() and "read again" in model.message()
    window = change_impact(base, base.with_changes(n_window=1024))
    assert not window.rebuild_caches and not window.reload_model
    assert "rebuilt from the stored K/V (Window size)" in window.message()
    assert "no document is read again" in window.message()
    assert change_impact(base, base.with_changes(folder="/elsewhere")).describe() == ""


def test_without_a_screen_the_app_says_so_instead_of_aborting(monkeypatch, capsys):
    from app.__main__ import main

    for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert main([]) == 2
    assert "needs a screen" in capsys.readouterr().err
