"""The first-run screen."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.resources import resource_path
from app.widgets.theme import app_icon


class WelcomePage(QWidget):
    """The first-run screen: what Folio does and how to start."""

    def __init__(self, on_open, on_sample, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        icon = QLabel()
        icon.setPixmap(app_icon().pixmap(QSize(96, 96)))
        icon.setAlignment(Qt.AlignmentFlag.AlignCenter)
        title = QLabel("Ask your documents")
        title.setObjectName("welcomeTitle")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        text = QLabel("Folio reads the <b>whole</b> document with a local language model — nothing leaves this "
                      "computer — and answers your questions with the pages it drew on.")
        text.setObjectName("welcomeText")
        text.setWordWrap(True)
        text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        hint = QLabel("Drop a PDF, Markdown or text file anywhere on this window")
        hint.setObjectName("dropHint")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        open_button = QPushButton("Open a document…  (Ctrl+O)")
        open_button.clicked.connect(on_open)
        sample_button = QPushButton("Try the sample document")
        sample_button.clicked.connect(on_sample)
        sample_button.setVisible(resource_path("sample.md").exists())
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(open_button)
        buttons.addWidget(sample_button)
        buttons.addStretch(1)
        self.model_line = QLabel()
        self.model_line.setObjectName("answerInfo")
        self.model_line.setAlignment(Qt.AlignmentFlag.AlignCenter)
        column = QVBoxLayout()
        column.addStretch(2)
        for widget in (icon, title, text, hint):
            column.addWidget(widget)
            column.addSpacing(8)
        column.addLayout(buttons)
        column.addSpacing(12)
        column.addWidget(self.model_line)
        column.addStretch(3)
        outer = QHBoxLayout(self)
        outer.addStretch(1)
        outer.addLayout(column, 4)
        outer.addStretch(1)
