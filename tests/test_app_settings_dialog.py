"""The settings panel tells the truth (issue 22): what a change costs, live under the form and in the confirmation
box (engine.change_cost), a one-line explanation of each attention setting, and the weights on the CPU."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QLabel, QMessageBox

from app.backend import CPU_WEIGHTS
from app.settings import SETTING_HELP, AppSettings
from app.widgets.settings_dialog import NO_CHANGE, SettingsDialog

ATTENTION_FIELDS = ("attention", "n_sink", "n_window", "top_k", "attention_share", "search_effort")


@pytest.fixture
def dialog(qtbot, config_dir):
    dialog = SettingsDialog(AppSettings(), confirm=True)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def test_the_cost_of_the_edited_settings_shows_under_the_form_as_fields_change(dialog):
    assert dialog.cost.isVisible() and dialog.cost.text() == NO_CHANGE
    dialog.top_k.setValue(250)
    assert "nothing is rebuilt" in dialog.cost.text()
    dialog.n_window.setValue(1024)
    assert "rebuilt from the stored K/V (Window size)" in dialog.cost.text()
    assert "no document is read again" in dialog.cost.text()
    dialog.model.setText("/models/another")
    assert "The model is reloaded (Model)" in dialog.cost.text()
    assert "read again at its next question" in dialog.cost.text()
    dialog.show_settings(AppSettings())
    assert dialog.cost.text() == NO_CHANGE


def test_the_confirmation_states_the_same_cost_and_quick_changes_ask_nothing(dialog, monkeypatch):
    asked = []

    def question(_parent, _title, text, *args):
        asked.append(text)
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", question)
    dialog.search_effort.setValue(300)
    dialog.accept()
    assert asked == [] and dialog.result_settings is not None
    dialog.result_settings = None
    dialog.attention.setCurrentIndex(dialog.attention.findData("retrieval"))
    dialog.n_sink.setValue(64)
    dialog.accept()
    assert len(asked) == 1 and asked[0].startswith(dialog.cost.text())
    assert "rebuilt from the stored K/V (Sink tokens)" in asked[0]
    assert dialog.result_settings is None  # answered No


@pytest.mark.parametrize("name", [*ATTENTION_FIELDS, "cpu_weights"])
def test_each_attention_setting_explains_itself_in_a_visible_line_and_its_tooltip(dialog, name):
    text = SETTING_HELP[name]
    assert getattr(dialog, name).toolTip() == text
    lines = [label for label in dialog.findChildren(QLabel, "settingHelp") if label.text() == text]
    assert len(lines) == 1 and lines[0].isVisible()


def test_the_weights_on_the_cpu_are_a_choice_int8_by_default(qtbot, dialog):
    combo = dialog.cpu_weights
    assert tuple(combo.itemData(i) for i in range(combo.count())) == CPU_WEIGHTS
    assert combo.currentData() == "int8"
    combo.setCurrentIndex(combo.findData("full"))
    settings = dialog.edited_settings()
    assert settings.engine.cpu_weights == "full"
    assert "The model is reloaded (Weights on the CPU)" in dialog.cost.text()
    reopened = SettingsDialog(settings, confirm=False)
    qtbot.addWidget(reopened)
    assert reopened.cpu_weights.currentData() == "full" and reopened.edited_settings() == settings
