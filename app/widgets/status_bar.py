"""The status bar: its labels shrink with the window and end in "…" (the tooltip has the whole text), and so does the
temporary message (showMessage); where the bar is too narrow for both, the labels step aside while the message shows.
Nothing is clipped at 640 px."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QPainter, QPaintEvent
from PySide6.QtWidgets import QLabel, QStatusBar, QStyle, QStyleOption, QWidget

MIN_CHARACTERS = 6  # an elided label keeps at least about this many characters' width
SLACK, SIZE_GRIP = 8, 20  # pixels: room for the layout's spacing per label, and for the size grip


class ElidedLabel(QLabel):
    """A one-line label that, when narrower than its text, shows it cut with "…"; the tooltip keeps the whole text.
    text() is the whole text; shown_text() what is drawn."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setText(text)

    text_set = Signal()

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setToolTip(text)
        self.text_set.emit()

    def shown_text(self) -> str:
        return self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.contentsRect().width())

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        least = self.fontMetrics().averageCharWidth() * MIN_CHARACTERS
        margins = self.contentsMargins()
        return QSize(min(hint.width(), least + margins.left() + margins.right()), hint.height())

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setPen(self.palette().color(self.foregroundRole()))
        painter.drawText(self.contentsRect(), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                         self.shown_text())


class StatusBar(QStatusBar):
    """A QStatusBar whose temporary message is an ElidedLabel beside the permanent labels; when the bar is too
    narrow for both, the labels step aside while the message shows (currentMessage, timeouts and clearMessage work
    as in QStatusBar)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message_label = ElidedLabel()
        self.message_label.setObjectName("statusMessage")
        self.labels: list[ElidedLabel] = []  # the permanent labels after the message
        self.message_label.setContentsMargins(6, 0, 6, 0)
        self.addPermanentWidget(self.message_label, 1)  # permanent: QStatusBar hides its other widgets for a message
        self.messageChanged.connect(self._show_message)

    def _show_message(self, text: str) -> None:
        self.message_label.setText(text)
        self._make_room()

    def _make_room(self) -> None:
        """The labels show unless a message is shown and they and it do not fit side by side. Where the labels do
        not fit on their own, the longest give way first (short ones stay whole)."""
        message = self.message_label
        room = self.width() - (SIZE_GRIP if self.isSizeGripEnabled() else 0) - SLACK * (len(self.labels) + 1)
        widths = [label.sizeHint().width() for label in self.labels]
        crowded = bool(message.text()) and sum(widths) + message.sizeHint().width() > room
        level = water_level(widths, room - message.minimumSizeHint().width())
        for label, width in zip(self.labels, widths, strict=True):
            label.setMaximumWidth(max(min(width, level), label.minimumSizeHint().width()))
            label.setVisible(not crowded)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._make_room()

    def add_label(self, text: str = "") -> ElidedLabel:
        """A permanent label after the message, that shrinks (elided) when the window is narrow."""
        label = ElidedLabel(text)
        label.setContentsMargins(6, 0, 6, 0)
        self.addPermanentWidget(label)
        self.labels.append(label)
        label.text_set.connect(self._make_room)
        return label

    def paintEvent(self, _event: QPaintEvent) -> None:
        """The panel only: the message label draws the message (QStatusBar would draw it again, unclipped)."""
        painter = QPainter(self)
        option = QStyleOption()
        option.initFrom(self)
        self.style().drawPrimitive(QStyle.PrimitiveElement.PE_PanelStatusBar, option, painter, self)


def water_level(widths: list[int], room: int) -> int:
    """The cap that makes `widths`, each cut to at most it, fill `room`: the widest are cut first."""
    count = len(widths)
    for width in sorted(widths):
        if width * count > room:
            return max(room // count, 0)
        room, count = room - width, count - 1
    return max(widths, default=0)
