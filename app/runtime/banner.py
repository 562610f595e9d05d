"""The GPU-runtime banner: one slim line at the top of the window saying where the model runs.

It shows what the RuntimeWorker reports ("No NVIDIA GPU found — running on the CPU.", the download with its
percent and time left, "GPU runtime ready — restart Folio …") with the one button that fits the state
(Download, Cancel, Resume, Retry, Restart now) and a button to hide it.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from app.backend import format_bytes
from app.runtime.worker import DOWNLOADING, OFFER  # the worker's states the banner shows as they are
from app.widgets.progress_panel import format_eta

INFO, READY, FAILED, PAUSED = "info", "ready", "failed", "paused"
WHILE_DOWNLOADING = " · running on the CPU until then"
ACTIONS = {OFFER: "Download", READY: "Restart now", FAILED: "Retry", PAUSED: "Resume"}


def progress_text(headline: str, done: int, total: int | None, eta_s: float) -> str:
    """``headline`` … 37%, about 4 min 00 s left (or … 114.4 MiB so far when the size is unknown)."""
    if not total:
        return f"{headline} … {format_bytes(done)} so far"
    percent = min(100, 100 * done // total)
    eta = format_eta(eta_s) if done < total else ""
    return f"{headline} … {percent}%" + (f", {eta}" if eta else "")


class RuntimeBanner(QFrame):
    """Hidden until the first report; the action button's meaning depends on the state (see ACTIONS)."""

    download_requested = Signal()  # Download, Resume or Retry
    cancel_requested = Signal()
    restart_requested = Signal()
    hidden_by_user = Signal(str, str)  # state, message: the user pressed Hide

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("runtimeBanner")
        self.label = QLabel()
        self.label.setObjectName("runtimeText")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.bar = QProgressBar()
        self.bar.setObjectName("runtimeBar")
        self.bar.setTextVisible(False)
        self.bar.setFixedSize(140, 8)
        self.action_button = QPushButton()
        self.action_button.clicked.connect(self._action)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the download; it continues where it stopped next time")
        self.cancel_button.clicked.connect(self._cancel)
        self.hide_button = QPushButton("Hide")
        self.hide_button.setObjectName("runtimeHide")
        self.hide_button.setToolTip("Hide this line (a download goes on in the background)")
        self.hide_button.clicked.connect(self._hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 4, 6, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.bar, 0, Qt.AlignmentFlag.AlignVCenter)
        for button in (self.action_button, self.cancel_button, self.hide_button):
            layout.addWidget(button, 0, Qt.AlignmentFlag.AlignVCenter)
        self.state = ""
        self.headline = ""
        self.hide()

    def set_state(self, state: str, message: str) -> None:
        """Show ``message`` in ``state`` (INFO, OFFER, DOWNLOADING, READY, FAILED, PAUSED)."""
        self.state = state
        self.setProperty("state", state)
        self.style().unpolish(self)
        self.style().polish(self)
        self.headline = message
        downloading = state == DOWNLOADING
        self.label.setText(f"{message} …{WHILE_DOWNLOADING}" if downloading else message)
        self.bar.setVisible(downloading)
        self.bar.setRange(0, 0)  # busy until the first progress report
        self.cancel_button.setVisible(downloading)
        self.cancel_button.setEnabled(True)
        self.action_button.setVisible(state in ACTIONS)
        self.action_button.setText(ACTIONS.get(state, ""))
        self.show()

    def update_progress(self, done: int, total: int | None, eta_s: float) -> None:
        """A download progress report (ignored unless downloading)."""
        if self.state != DOWNLOADING:
            return
        if total:
            self.bar.setRange(0, 1000)
            self.bar.setValue(min(1000, 1000 * done // total))
        self.label.setText(progress_text(self.headline, done, total, eta_s) + WHILE_DOWNLOADING)

    @property
    def message(self) -> str:
        """The text shown ("" while hidden)."""
        return self.label.text() if self.isVisible() else ""

    def _hide(self) -> None:
        self.hide()
        self.hidden_by_user.emit(self.state, self.headline)

    def _cancel(self) -> None:
        self.cancel_button.setEnabled(False)  # until the worker reports the download stopped
        self.cancel_requested.emit()

    def _action(self) -> None:
        if self.state == READY:
            self.restart_requested.emit()
        elif self.state in ACTIONS:
            self.download_requested.emit()
