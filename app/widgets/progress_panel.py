"""The progress panel: stage, percent, ETA and Cancel for model load, ingest and answer prefill."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from app.backend import format_bytes
from app.widgets.text import rich_text

STAGE_NAMES = {
    "download": "Downloading the model",
    "verify": "Checking the download",
    "extract": "Extracting text",
    "convert": "Converting the model",
    "load": "Loading the model",
    "tokenize": "Tokenizing",
    "prefill": "Reading the document (prefill)",
    "question": "Reading your question",
    "index": "Building the index",
    "saving": "Saving the cache",
    "citation baseline": "Preparing the sources (once per document)",
}
# Counts that mean nothing to a reader: a layer-by-layer prefill counts tokens times layers (the bar's percent says it)
UNITS_WITHOUT_COUNTS = {"token-layers"}


def format_eta(seconds: float) -> str:
    if seconds < 0:
        return ""
    if seconds < 60:
        return f"about {max(1, round(seconds))} s left"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"about {minutes} min {secs:02d} s left"
    return f"about {minutes // 60} h {minutes % 60:02d} min left"


def stage_words(stage: str) -> str:
    """An engine stage as the reader sees it."""
    return STAGE_NAMES.get(stage, stage.capitalize())


def describe(stage: str, done: int, total: int, unit: str, eta_s: float) -> str:
    name = stage_words(stage)
    parts = [name]
    if unit == "bytes":
        parts.append(f"{format_bytes(done)} of {format_bytes(total)}")
    elif total > 1 and unit not in UNITS_WITHOUT_COUNTS:
        parts.append(f"{done:,} of {total:,} {unit}".strip())
    if eta := (format_eta(eta_s) if done < total else ""):
        parts.append(eta)
    return " · ".join(parts)


class ProgressPanel(QFrame):
    """Shown while a long job runs; `cancel_requested` when the user presses Cancel."""

    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("progressPanel")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel()
        self.title.setObjectName("progressTitle")
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setObjectName("progressDetail")
        self.bar = QProgressBar()
        self.bar.setRange(0, 100)
        self.bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop this job (Esc)")
        self.cancel_button.clicked.connect(self.cancel_requested)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.addWidget(self.title)
        layout.addLayout(row)
        layout.addWidget(self.detail)
        self.stage = ""
        self.percent = 0
        self.hide()

    def start(self, title: str, detail: str = "") -> None:
        self.title.setText(f"<b>{rich_text(title)}</b>")
        self.detail.setText(detail)
        self.detail.setVisible(bool(detail))
        self.stage, self.percent = "", 0
        self.bar.setValue(0)
        self.bar.setFormat("%p%")
        self.cancel_button.setEnabled(True)
        self.show()

    def set_detail(self, text: str) -> None:
        self.detail.setText(text)
        self.detail.setVisible(bool(text))

    def update_progress(self, stage: str, done: int, total: int, unit: str, eta_s: float) -> None:
        self.stage = stage
        self.percent = int(100 * done / total) if total else 0
        self.bar.setValue(self.percent)
        self.bar.setFormat(f"{describe(stage, done, total, unit, eta_s)} — %p%")
        if not self.isVisible():
            self.start("Working…")

    def finish(self) -> None:
        self.hide()
