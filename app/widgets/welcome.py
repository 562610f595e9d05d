"""The first-run screen: what Folio does, how to start, and (on the first run) the offer of a larger model."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.resources import resource_path
from app.widgets.theme import app_icon


class WelcomePage(QWidget):
    """The start screen: what Folio does and how to start; `show_model_offer` adds the first run's model offer."""

    def __init__(self, on_open, on_sample, on_choose_model=None, on_keep_model=None,
                 parent: QWidget | None = None) -> None:
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
        # The first run's offer of a larger model; the bundled one works offline meanwhile.
        self.model_offer = QLabel("Folio starts with the small bundled model (SmolLM2-135M: 8K tokens, works offline). "
                                  "For long documents, choose a larger model that fits this computer.")
        self.model_offer.setObjectName("modelOffer")
        self.model_offer.setWordWrap(True)
        self.model_offer.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.choose_model_button = QPushButton("Choose a model…")
        self.choose_model_button.setToolTip("The model catalog: what fits this computer, downloads (File → Models…)")
        if on_choose_model is not None:
            self.choose_model_button.clicked.connect(on_choose_model)
        self.keep_model_button = QPushButton("Keep the bundled model")
        if on_keep_model is not None:
            self.keep_model_button.clicked.connect(on_keep_model)
        offer_buttons = QHBoxLayout()
        offer_buttons.addStretch(1)
        offer_buttons.addWidget(self.choose_model_button)
        offer_buttons.addWidget(self.keep_model_button)
        offer_buttons.addStretch(1)
        self.offer_box = QWidget()
        offer_column = QVBoxLayout(self.offer_box)
        offer_column.addWidget(self.model_offer)
        offer_column.addLayout(offer_buttons)
        self.offer_box.hide()
        column = QVBoxLayout()
        column.addStretch(2)
        for widget in (icon, title, text, hint):
            column.addWidget(widget)
            column.addSpacing(8)
        column.addLayout(buttons)
        column.addSpacing(12)
        column.addWidget(self.model_line)
        column.addSpacing(12)
        column.addWidget(self.offer_box)
        column.addStretch(3)
        outer = QHBoxLayout(self)
        outer.addStretch(1)
        outer.addLayout(column, 4)
        outer.addStretch(1)

    def show_model_offer(self, show: bool) -> None:
        self.offer_box.setVisible(show)
