"""Errors as a message in the window."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget


class ErrorBanner(QFrame):
    """A readable message in the window (never a traceback dialog), dismissed by the user."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.PlainText)  # messages name files: never rich text
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.action_button = QPushButton()  # what the message offers to do, when it offers something
        self.action_button.clicked.connect(self._act)
        self._action: Callable[[], None] | None = None
        dismiss = QPushButton("Dismiss")
        dismiss.setObjectName("dismissError")
        dismiss.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 8, 8)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.action_button, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(dismiss, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_message(self, message: str, action: str = "", on_action: Callable[[], None] | None = None) -> None:
        """Show `message`; with `action`, also a button of that name that hides the banner and calls `on_action`."""
        self.label.setText(message)
        self._action = on_action if action else None
        self.action_button.setText(action)
        self.action_button.setVisible(bool(action))
        self.show()

    def add_message(self, message: str) -> None:
        """Show `message` under the ones shown (several files failing to open are each reported), or on its own when
        the banner is hidden or offers an action."""
        shown = self.label.text().split("\n") if self.isVisible() and not self._action else []
        if message not in shown:
            self.show_message("\n".join([*shown, message]))

    def _act(self) -> None:
        action = self._action
        self.hide()
        if action is not None:
            action()

    @property
    def message(self) -> str:
        return self.label.text() if self.isVisible() else ""
