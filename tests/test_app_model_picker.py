"""The model picker in the window, against the fake backend (pytest-qt, offscreen): the catalog with what fits a
12 GB card and the recommended model, download with progress and Cancel, a gated model and its token, removal,
choosing a model (it reloads), the first run's offer, and the settings dialog's Models… button."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QPushButton

from app.fake_backend import FakeBackend
from app.main_window import MainWindow
from app.settings import load_settings
from app.widgets.model_picker import ModelPicker
from app.widgets.settings_dialog import SettingsDialog


def open_picker(qtbot, window: MainWindow) -> ModelPicker:
    picker = window.open_model_picker()
    qtbot.waitUntil(lambda: picker.table.rowCount() > 0 and not window.models.busy, timeout=5000)
    return picker


def row_of(picker: ModelPicker, model_id: str) -> int:
    return next(i for i, c in enumerate(picker.choices) if c.entry.id == model_id)


def test_picker_lists_the_catalog_with_fit_and_recommendation(qtbot, make_window):
    window = make_window()
    picker = open_picker(qtbot, window)
    assert "12 GB card" in picker.machine.text()
    names = [picker.table.item(r, 0).text() for r in range(picker.table.rowCount())]
    assert len(names) == 6 and names[0].startswith("SmolLM2")
    qwen7 = row_of(picker, "qwen2.5-7b-instruct")
    assert "recommended" in names[qwen7] and sum("recommended" in n for n in names) == 1
    assert picker.table.item(qwen7, 3).text() == "32K: 8-bit · 128K: 8-bit"  # full weights need 14 GiB
    assert picker.table.item(qwen7, 4).text().startswith("download 14.")
    assert picker.table.item(row_of(picker, "smollm2-135m-instruct"), 4).text() == "installed"
    assert "gated" in picker.table.item(row_of(picker, "llama-3.1-8b-instruct"), 5).text()
    assert picker.selected().entry.id == "qwen2.5-7b-instruct"  # the recommended one is preselected
    assert picker.weights.currentData() == "8bit"
    lines = [picker.weights.itemText(i) for i in range(picker.weights.count())]
    assert lines[0].startswith("Full precision — 14.2 GiB of weights, does not fit: needs")
    assert "fits documents up to 128K" in lines[1] and "fits documents up to 128K" in lines[2]
    assert not picker.use_button.isEnabled() and picker.download_button.isEnabled()  # not installed yet
    assert "YaRN" in picker.detail.text()


def test_download_then_use_reloads_the_model(qtbot, make_window, config_dir):
    backend = FakeBackend(step_s=0.005)
    window = make_window(backend)
    picker = open_picker(qtbot, window)
    formats = []
    window.models.worker.progress.connect(lambda *_: formats.append(picker.progress.format()))
    picker.download_button.click()
    qtbot.waitUntil(lambda: picker.use_button.isEnabled(), timeout=5000)
    assert backend.pulls == ["qwen2.5-7b-instruct"]
    assert any("GiB of 14." in f and "Downloading the model" in f for f in formats)
    assert "is downloaded" in picker.message.text()
    assert picker.table.item(row_of(picker, "qwen2.5-7b-instruct"), 4).text() == "installed"
    picker.weights.setCurrentIndex(picker.weights.findData("4bit"))
    picker.use_button.click()
    qtbot.waitUntil(lambda: window.model_info is not None and window.model_info.name == "Qwen2.5 7B Instruct"
                    and not window.controller.busy, timeout=5000)
    assert (window.settings.engine.model, window.settings.engine.weights) == ("Qwen/Qwen2.5-7B-Instruct", "4bit")
    assert "4-bit weights" in window.device_label.text()
    saved, _ = load_settings(config_dir / "settings.json")
    assert saved.engine.model == "Qwen/Qwen2.5-7B-Instruct" and saved.engine.weights == "4bit"
    assert window.model_picker is None


def test_cancel_a_download(qtbot, make_window):
    backend = FakeBackend(step_s=0.05)
    window = make_window(backend)
    picker = open_picker(qtbot, window)
    picker.select("qwen2.5-3b-instruct")
    picker.download_button.click()
    qtbot.waitUntil(lambda: picker.progress.value() > 0, timeout=5000)
    assert picker.cancel_button.isEnabled() and not picker.download_button.isEnabled()
    picker.cancel_button.click()
    qtbot.waitUntil(lambda: not window.models.busy, timeout=5000)
    assert "Download cancelled" in picker.message.text() and "continues" in picker.message.text()
    assert "qwen2.5-3b-instruct" not in backend.installed
    assert picker.download_button.isEnabled() and not picker.use_button.isEnabled()


def test_gated_model_asks_for_licence_and_token(qtbot, make_window):
    backend = FakeBackend(step_s=0.002)
    window = make_window(backend)
    picker = open_picker(qtbot, window)
    picker.select("llama-3.1-8b-instruct")
    assert picker.token_box.isVisible() and "Gated" in picker.detail.text()
    assert picker.token.echoMode() == picker.token.EchoMode.Password
    picker.download_button.click()
    qtbot.waitUntil(lambda: picker.message.isVisible() and not window.models.busy, timeout=5000)
    assert "gated" in picker.message.text() and "licence" in picker.message.text()
    assert "meta-llama/Llama-3.1-8B-Instruct" in picker.message.text()
    picker.token.setText("hf_testToken")
    picker.save_token_button.click()
    qtbot.waitUntil(lambda: picker.token_state.text() == "a token is stored", timeout=5000)
    assert backend.hub_token == "hf_testToken" and picker.token.text() == ""
    picker.download_button.click()
    qtbot.waitUntil(lambda: picker.use_button.isEnabled(), timeout=5000)
    assert "llama-3.1-8b-instruct" in backend.installed


def test_remove_a_downloaded_model(qtbot, make_window):
    backend = FakeBackend(step_s=0.002)
    backend.installed.add("qwen2.5-1.5b-instruct")
    window = make_window(backend)
    picker = open_picker(qtbot, window)
    picker.select("qwen2.5-1.5b-instruct")
    assert picker.remove_button.isEnabled()
    picker.remove_button.click()
    qtbot.waitUntil(lambda: "Removed" in picker.message.text() and not window.models.busy, timeout=5000)
    assert "qwen2.5-1.5b-instruct" not in backend.installed
    picker.select("smollm2-135m-instruct")
    assert not picker.remove_button.isEnabled() and picker.use_button.isEnabled()  # the bundled model stays


def test_first_run_offers_the_picker_and_works_offline_with_the_bundled_model(qtbot, make_window, config_dir):
    window = make_window(first_run=True)
    assert window.welcome.offer_box.isVisible() and "works offline" in window.welcome.model_offer.text()
    assert window.model_info.name == "FakeLM-1B"  # the bundled model is ready meanwhile
    window.welcome.choose_model_button.click()
    assert window.model_picker is not None
    qtbot.waitUntil(lambda: window.model_picker.table.rowCount() == 6, timeout=5000)
    window.model_picker.reject()
    qtbot.waitUntil(lambda: window.model_picker is None, timeout=5000)
    window.welcome.keep_model_button.click()
    assert not window.welcome.offer_box.isVisible()
    assert (config_dir / "settings.json").exists()  # so the next start is not a first run


def test_settings_dialog_models_button_fills_model_and_weights(qtbot, make_window):
    backend = FakeBackend(step_s=0.002)
    backend.installed.add("mistral-7b-instruct-v0.3")
    window = make_window(backend)
    dialog = SettingsDialog(window.settings, window, confirm=False, choose_model=window.open_model_picker)
    qtbot.addWidget(dialog)
    [button] = [b for b in dialog.findChildren(QPushButton) if b.text() == "Models…"]
    button.click()
    picker = window.model_picker
    qtbot.waitUntil(lambda: picker.table.rowCount() > 0 and not window.models.busy, timeout=5000)
    picker.select("mistral-7b-instruct-v0.3")
    picker.weights.setCurrentIndex(picker.weights.findData("8bit"))
    picker.use_button.click()
    qtbot.waitUntil(lambda: window.model_picker is None, timeout=5000)
    assert dialog.model.text() == "mistralai/Mistral-7B-Instruct-v0.3" and dialog.weights.currentData() == "8bit"
    assert window.settings.engine.model == "default"  # applied only when the settings dialog is accepted
    dialog.accept()
    assert dialog.result_settings.engine.weights == "8bit"
