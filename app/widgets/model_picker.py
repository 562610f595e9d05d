"""The model picker (first run, File → Models…, Settings): the catalog with, per model, what fits on this machine
(per precision and document length), whether it is installed, and the recommended choice; download with progress
and Cancel, removal, and the hub access token for gated models. It takes plain data (the backend's ModelChoice
rows) and emits signals; the window runs the work on its model thread."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.backend import WEIGHTS, format_bytes
from app.widgets.progress_panel import describe

WEIGHT_NAMES = {"full": "Full precision", "8bit": "8-bit", "4bit": "4-bit"}
COLUMNS = ("Model", "Parameters", "Context", "Fits here (document length: weights)", "On this computer", "Licence")


def length_label(tokens: int) -> str:
    """31,744 -> "32K": a document length as the context it fills (the answer's room rounded back in)."""
    return f"{round(tokens / 1024 / 8) * 8 or round(tokens / 1024)}K"


def fit_summary(choice) -> str:
    """"32K: full · 128K: 8-bit", or why nothing fits."""
    parts = []
    for tokens in choice.lengths():
        weights = choice.best_weights(tokens)
        parts.append(f"{length_label(tokens)}: {WEIGHT_NAMES[weights].lower() if weights else 'no'}")
    return " · ".join(parts) if any(choice.best_weights(t) for t in choice.lengths()) else "does not fit"


def weights_line(choice, weights: str) -> str:
    """One precision of one model: its weights' size and where it fits, or what it lacks."""
    fits = [f for f in choice.fits if f.weights == weights]
    size = format_bytes(fits[0].weights_bytes)
    fitting = [length_label(f.tokens) for f in fits if f.fits]
    if fitting:
        return f"{WEIGHT_NAMES[weights]} — {size} of weights, fits documents up to {fitting[-1]} tokens"
    return f"{WEIGHT_NAMES[weights]} — {size} of weights, does not fit: {fits[0].problems[0]}"


class ModelPicker(QDialog):
    """`chosen` holds (spec, weights) once the user picks an installed model and presses Use."""

    pull_requested = Signal(str)
    remove_requested = Signal(str)
    cancel_requested = Signal()
    token_entered = Signal(str)

    def __init__(self, current_model: str = "default", current_weights: str = "full",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Choose a model")
        self.resize(980, 560)
        self.current_model, self.current_weights = current_model, current_weights
        self.choices: list = []
        self.chosen: tuple[str, str] | None = None
        self.busy = False
        self.machine = QLabel("Checking this computer…")
        self.machine.setObjectName("pickerMachine")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setOpenExternalLinks(True)
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        self.weights = QComboBox()
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("hub access token (hf_…), for gated models")
        self.save_token_button = QPushButton("Save token")
        self.save_token_button.clicked.connect(self._save_token)
        self.token_state = QLabel()
        token_row = QHBoxLayout()
        token_row.addWidget(QLabel("Access token:"))
        token_row.addWidget(self.token, 1)
        token_row.addWidget(self.save_token_button)
        token_row.addWidget(self.token_state)
        self.token_box = QWidget()
        self.token_box.setLayout(token_row)
        self.token_box.hide()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.clicked.connect(self.cancel_requested)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_button)
        self.progress_box = QWidget()
        self.progress_box.setLayout(progress_row)
        self.progress_box.hide()
        self.message = QLabel()
        self.message.setObjectName("pickerMessage")
        self.message.setWordWrap(True)
        self.message.hide()
        self.download_button = QPushButton("Download")
        self.download_button.clicked.connect(self._download)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self._remove)
        self.use_button = QPushButton("Use this model")
        self.use_button.setDefault(True)
        self.use_button.clicked.connect(self._use)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        buttons.addWidget(self.use_button)
        buttons.addWidget(close)
        weights_row = QHBoxLayout()
        weights_row.addWidget(QLabel("Weights:"))
        weights_row.addWidget(self.weights, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.machine)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.detail)
        layout.addLayout(weights_row)
        layout.addWidget(self.token_box)
        layout.addWidget(self.progress_box)
        layout.addWidget(self.message)
        layout.addLayout(buttons)
        self._update_buttons()

    # -- data in -------------------------------------------------------------------------------------
    def show_choices(self, machine: str, choices: list) -> None:
        """The catalog rows for this machine; keeps the selection (else selects the current, else the recommended)."""
        selected = self.selected()
        self.choices = list(choices)
        self.machine.setText(f"<b>On this computer:</b> {machine}")
        self.table.setRowCount(len(self.choices))
        for row, choice in enumerate(self.choices):
            entry = choice.entry
            name = entry.name + ("  ★ recommended" if choice.recommended else "")
            installed = "installed" if choice.installed else f"download {format_bytes(entry.download_bytes)}"
            licence = entry.licence + (" · gated" if entry.gated else "")
            for column, text in enumerate((name, f"{entry.parameters / 1e9:.2f} B", f"{entry.context:,}",
                                           fit_summary(choice), installed, licence)):
                item = QTableWidgetItem(text)
                if column == 0 and choice.recommended:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(row, column, item)
        wanted = selected.entry.id if selected else None
        for choice in self.choices:
            if wanted is None and self.current_model in (choice.entry.spec, choice.entry.hub_id, choice.entry.id) \
                    and not choice.entry.bundled:
                wanted = choice.entry.id
        if wanted is None:
            wanted = next((c.entry.id for c in self.choices if c.recommended), None)
        for row, choice in enumerate(self.choices):
            if choice.entry.id == wanted:
                self.table.selectRow(row)
        self._selection_changed()

    def selected(self):
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.choices[rows[0].row()] if rows and rows[0].row() < len(self.choices) else None

    def select(self, model_id: str) -> None:
        for row, choice in enumerate(self.choices):
            if choice.entry.id == model_id:
                self.table.selectRow(row)

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        self._update_buttons()

    def show_progress(self, stage: str, done: int, total: int, unit: str, eta_s: float) -> None:
        self.progress_box.show()
        self.progress.setValue(int(100 * done / total) if total else 0)
        self.progress.setFormat(describe(stage, done, total, unit, eta_s) + " — %p%")

    def download_finished(self, spec: str) -> None:
        self.progress_box.hide()
        self.show_message(f"{spec} is downloaded. Press “Use this model” to switch to it.")

    def download_cancelled(self) -> None:
        self.progress_box.hide()
        self.show_message("Download cancelled. Downloading it again continues from the files already fetched.")

    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def show_error(self, text: str) -> None:
        self.progress_box.hide()
        self.show_message(text)
        if "token" in text:
            self.token_box.show()

    def token_saved(self, has_token: bool) -> None:
        self.token.clear()
        self.token_state.setText("a token is stored" if has_token else "no token stored")

    # -- user actions ----------------------------------------------------------------------------------
    def _selection_changed(self) -> None:
        choice = self.selected()
        self.weights.clear()
        if choice is None:
            self.detail.clear()
            self._update_buttons()
            return
        entry = choice.entry
        licence = f'<a href="{entry.licence_url}">{entry.licence}</a>'
        gated = (" <b>Gated:</b> accept the licence on its hub page with your account, then save an access token "
                 "of that account below.") if entry.gated else ""
        rope = " Its 128K context comes from YaRN RoPE scaling." if entry.rope_scaling else ""
        self.detail.setText(f"<b>{entry.name}</b> ({entry.hub_id}) — {entry.summary}{rope} Licence: {licence}."
                            f"{gated}")
        self.token_box.setVisible(entry.gated or self.token_box.isVisible())
        best = choice.recommended_weights or choice.best_weights(choice.lengths()[-1]) or \
            choice.best_weights(choice.lengths()[0]) or "full"
        if self.current_model in (entry.spec, entry.hub_id, entry.id):
            best = self.current_weights
        for weights in WEIGHTS:
            self.weights.addItem(weights_line(choice, weights), weights)
        self.weights.setCurrentIndex(max(0, self.weights.findData(best)))
        self._update_buttons()

    def _update_buttons(self) -> None:
        choice = self.selected()
        idle = not self.busy
        self.download_button.setEnabled(idle and choice is not None and not choice.installed)
        self.remove_button.setEnabled(idle and choice is not None and choice.installed and not choice.entry.bundled)
        self.use_button.setEnabled(idle and choice is not None and choice.installed)
        self.cancel_button.setEnabled(self.busy)
        self.table.setEnabled(idle)
        self.save_token_button.setEnabled(idle)

    def _download(self) -> None:
        choice = self.selected()
        if choice is not None:
            self.show_message("")
            self.progress.setValue(0)
            self.progress.setFormat("Starting the download…")
            self.progress_box.show()
            self.pull_requested.emit(choice.entry.spec)

    def _remove(self) -> None:
        choice = self.selected()
        if choice is not None:
            self.remove_requested.emit(choice.entry.spec)

    def _save_token(self) -> None:
        self.token_entered.emit(self.token.text().strip())

    def _use(self) -> None:
        choice = self.selected()
        if choice is None or not choice.installed:
            return
        self.chosen = (choice.entry.spec, self.weights.currentData() or "full")
        self.accept()
