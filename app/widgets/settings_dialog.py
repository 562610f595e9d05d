"""The settings panel (Ctrl+,): edit AppSettings, validate with clear messages, say what a change costs (live, under
the form, and in the confirmation box: engine.change_cost through app.settings.change_impact), and explain each
setting in a line (app.settings.SETTING_HELP: a help line under the field and its tooltip)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.backend import CPU_WEIGHTS, DTYPES, GIB, MAX_ANSWER_TOKENS, WEIGHTS
from app.settings import (
    ATTENTION_CHOICES,
    CPU_WEIGHT_NAMES,
    SETTING_HELP,
    SETTING_LABELS,
    AppSettings,
    change_impact,
)

DEVICE_CHOICES = (("auto", "Automatic (GPU when present)"), ("cpu", "CPU"), ("cuda", "NVIDIA GPU (CUDA)"))
WEIGHT_NAMES = {"full": "Full", "8bit": "8-bit (quantized at load)", "4bit": "4-bit (quantized at load)"}
WEIGHT_CHOICES = tuple((w, WEIGHT_NAMES[w]) for w in WEIGHTS)
CPU_WEIGHT_CHOICES = tuple((w, CPU_WEIGHT_NAMES[w]) for w in CPU_WEIGHTS)
NO_CHANGE = "What a change costs shows here: what is kept, what is rebuilt, and whether documents are read again."
COST_LINES = 3  # the room kept for it


def _combo(choices: tuple[tuple[str, str], ...], editable: bool = False) -> QComboBox:
    combo = QComboBox()
    combo.setEditable(editable)
    for value, label in choices:
        combo.addItem(label, value)
    return combo


def _set_combo(combo: QComboBox, value: str) -> None:
    index = combo.findData(value)
    if index < 0:
        combo.addItem(value, value)
        index = combo.count() - 1
    combo.setCurrentIndex(index)


def _label(name: str) -> str:
    return SETTING_LABELS[name] + ":"


def _add_with_help(form: QFormLayout, name: str, field: QWidget) -> None:
    """A form row for setting `name`, with its one-line explanation (SETTING_HELP) under it across the form, which
    is also the field's tooltip."""
    text = SETTING_HELP[name]
    field.setToolTip(text)
    help_line = QLabel(text)
    help_line.setObjectName("settingHelp")
    help_line.setWordWrap(True)
    form.addRow(_label(name), field)
    form.addRow(help_line)


def _spin(minimum: int, maximum: int, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(minimum, maximum)
    spin.setSingleStep(step)
    spin.setGroupSeparatorShown(True)
    return spin


class SettingsDialog(QDialog):
    """Shows `settings`; `result_settings` holds the accepted, validated settings."""

    def __init__(self, settings: AppSettings, parent: QWidget | None = None, confirm: bool = True,
                 choose_model=None) -> None:
        """choose_model(on_chosen, parent): opens the model picker, which calls on_chosen(spec, weights)."""
        super().__init__(parent)
        self.setWindowTitle("Folio settings")
        self.original = settings
        self.result_settings: AppSettings | None = None
        self.confirm = confirm

        self.model = QLineEdit()
        self.model.setPlaceholderText("default, a model folder, or a hub id like Qwen/Qwen2.5-7B-Instruct")
        browse = QPushButton("Folder…")
        browse.clicked.connect(self._browse_model)
        use_default = QPushButton("Default")
        use_default.setToolTip("The bundled SmolLM2-135M-Instruct")
        use_default.clicked.connect(lambda: self.model.setText("default"))
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        if choose_model is not None:
            catalog = QPushButton("Models…")
            catalog.setToolTip("The model catalog: what fits this computer, downloads")
            catalog.clicked.connect(lambda: choose_model(on_chosen=self.set_model, parent=self))
            model_row.addWidget(catalog)
        model_row.addWidget(browse)
        model_row.addWidget(use_default)
        self.device = _combo(DEVICE_CHOICES, editable=True)
        self.dtype = _combo(tuple((d, "Automatic" if d == "auto" else d) for d in DTYPES))
        self.weights = _combo(WEIGHT_CHOICES)
        self.cpu_weights = _combo(CPU_WEIGHT_CHOICES)
        self.gpu_runtime = QCheckBox("Download the GPU runtime when an NVIDIA GPU is found")
        self.gpu_runtime.setToolTip("A CUDA build of torch (about 2.6 GiB), fetched once in the background; "
                                    "Folio runs on the CPU until it is ready")
        self.attention = _combo(ATTENTION_CHOICES)
        self.n_sink = _spin(0, 65536)
        self.n_window = _spin(0, 1 << 20, 64)
        self.top_k = _spin(1, 100000, 10)
        self.attention_share = QDoubleSpinBox()
        self.attention_share.setRange(0.0, 100.0)
        self.attention_share.setDecimals(1)
        self.attention_share.setSingleStep(1.0)
        self.attention_share.setSuffix(" %")
        self.attention_share.setSpecialValueText("0 (fixed top-k)")
        self.search_effort = _spin(1, 100000, 10)
        self.max_new_tokens = _spin(1, MAX_ANSWER_TOKENS, 64)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 5.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setDecimals(2)
        self.temperature.setSpecialValueText("0 (greedy)")
        self.data_folder = QLineEdit()
        data_browse = QPushButton("Folder…")
        data_browse.clicked.connect(self._browse_data)
        data_row = QHBoxLayout()
        data_row.addWidget(self.data_folder, 1)
        data_row.addWidget(data_browse)
        self.disk_budget = QDoubleSpinBox()
        self.disk_budget.setRange(0.0, 100000.0)
        self.disk_budget.setSuffix(" GiB")
        self.disk_budget.setDecimals(1)

        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        model_form.addRow(_label("model"), model_row)
        model_form.addRow(_label("device"), self.device)
        model_form.addRow(_label("dtype"), self.dtype)
        _add_with_help(model_form, "weights", self.weights)
        _add_with_help(model_form, "cpu_weights", self.cpu_weights)
        model_form.addRow("", self.gpu_runtime)
        attention_box = QGroupBox("Attention")
        attention_form = QFormLayout(attention_box)
        for name in ("attention", "n_sink", "n_window", "top_k", "attention_share", "search_effort"):
            _add_with_help(attention_form, name, getattr(self, name))
        answer_box = QGroupBox("Answers and storage")
        answer_form = QFormLayout(answer_box)
        answer_form.addRow(_label("max_new_tokens"), self.max_new_tokens)
        answer_form.addRow(_label("temperature"), self.temperature)
        answer_form.addRow("Data folder:", data_row)
        answer_form.addRow("Disk budget:", self.disk_budget)
        self.cost = QLabel()  # what the edited settings cost, kept up to date as fields change
        self.cost.setObjectName("settingsCost")
        self.cost.setWordWrap(True)
        self.cost.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.cost.setMinimumHeight(self.cost.fontMetrics().lineSpacing() * COST_LINES + 8)  # room kept: no jumps
        self.error = QLabel()
        self.error.setObjectName("settingsError")
        self.error.setWordWrap(True)
        self.error.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
                                   | QDialogButtonBox.StandardButton.RestoreDefaults)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        buttons.button(QDialogButtonBox.StandardButton.RestoreDefaults).clicked.connect(
            lambda: self.show_settings(AppSettings()))
        left = QVBoxLayout()
        left.addWidget(model_box)
        left.addWidget(answer_box)
        left.addStretch(1)
        columns = QHBoxLayout()
        columns.addLayout(left, 1)
        columns.addWidget(attention_box, 1, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.addLayout(columns)
        for widget in (self.cost, self.error, buttons):
            layout.addWidget(widget)
        self.show_settings(settings)
        for line in (self.model, self.data_folder):
            line.textChanged.connect(self._show_cost)
        for combo in (self.device, self.dtype, self.weights, self.cpu_weights, self.attention):
            combo.currentIndexChanged.connect(self._show_cost)
        self.device.editTextChanged.connect(self._show_cost)
        for spin in (self.n_sink, self.n_window, self.top_k, self.attention_share, self.search_effort,
                     self.max_new_tokens, self.temperature, self.disk_budget):
            spin.valueChanged.connect(self._show_cost)
        self.gpu_runtime.toggled.connect(self._show_cost)
        self._show_cost()

    def show_settings(self, settings: AppSettings) -> None:
        engine, library = settings.engine, settings.library
        self.model.setText(engine.model)
        _set_combo(self.device, engine.device)
        _set_combo(self.dtype, engine.dtype)
        _set_combo(self.weights, engine.weights)
        _set_combo(self.cpu_weights, engine.cpu_weights)
        _set_combo(self.attention, engine.attention)
        self.n_sink.setValue(engine.n_sink)
        self.n_window.setValue(engine.n_window)
        self.top_k.setValue(engine.top_k)
        self.attention_share.setValue(engine.attention_share * 100)
        self.search_effort.setValue(engine.search_effort)
        self.max_new_tokens.setValue(engine.max_new_tokens)
        self.temperature.setValue(engine.temperature)
        self.data_folder.setText(library.folder)
        self.disk_budget.setValue(library.budget_bytes / GIB)
        self.gpu_runtime.setChecked(settings.gpu_runtime_auto_download)

    def edited_settings(self) -> AppSettings:
        """The values in the form; ValueError names every invalid one."""
        index = self.device.findText(self.device.currentText())
        device = self.device.itemData(index) if index >= 0 else self.device.currentText().strip()
        return self.original.with_changes(
            model=self.model.text().strip(), device=device or "auto",
            dtype=self.dtype.currentData(), weights=self.weights.currentData(),
            cpu_weights=self.cpu_weights.currentData(),
            attention=self.attention.currentData(), n_sink=self.n_sink.value(),
            n_window=self.n_window.value(), top_k=self.top_k.value(),
            attention_share=round(self.attention_share.value() / 100, 4), search_effort=self.search_effort.value(),
            max_new_tokens=self.max_new_tokens.value(), temperature=self.temperature.value(),
            folder=self.data_folder.text().strip(),
            budget_bytes=round(self.disk_budget.value() * GIB),
            gpu_runtime_auto_download=self.gpu_runtime.isChecked(),
        )

    def _show_cost(self) -> None:
        """What applying the form's settings would cost, under the form (NO_CHANGE while no engine setting changed
        or a value is invalid: OK then says what is wrong)."""
        try:
            text = change_impact(self.original, self.edited_settings()).describe()
        except ValueError:
            text = ""
        self.cost.setText(text or NO_CHANGE)

    def accept(self) -> None:
        try:
            settings = self.edited_settings()
            settings.validate()
        except ValueError as error:
            self.error.setText(str(error))
            self.error.show()
            return
        impact = change_impact(self.original, settings)
        if self.confirm and (message := impact.message()):
            answer = QMessageBox.question(self, "Apply settings?", message + "\n\nApply the new settings now?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.result_settings = settings
        super().accept()

    def set_model(self, spec: str, weights: str) -> None:
        """A model chosen in the picker: fill the fields (applied with the other settings on OK)."""
        self.model.setText(spec)
        _set_combo(self.weights, weights)

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder (with config.json)")
        if folder:
            self.model.setText(folder)

    def _browse_data(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose the data folder", self.data_folder.text())
        if folder:
            self.data_folder.setText(folder)
