"""The chats of the open document: a list (newest first) with New, Rename (or double-click), Delete and Export."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.backend import ChatListing
from app.library import format_ago

KEY = Qt.ItemDataRole.UserRole


class ChatListPanel(QWidget):
    """Emits `selected(key)`, `new_requested()`, `rename_requested(key, title)`, `delete_requested(key)` and
    `export_requested(key)`; shows what `set_chats` gives it."""

    selected = Signal(str)
    new_requested = Signal()
    rename_requested = Signal(str, str)
    delete_requested = Signal(str)
    export_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.heading = QLabel("<b>Chats</b>")
        self.heading.setObjectName("chatsHeading")
        self.list = QListWidget()
        self.list.setObjectName("chatList")
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                  | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.list.setAcceptDrops(False)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)  # long titles end in "…"; the tooltip has them
        self.list.itemSelectionChanged.connect(self._selection_changed)
        self.list.itemChanged.connect(self._item_changed)
        self.new_button = QPushButton("New")
        self.new_button.setToolTip("A new chat on this document: the document stays cached (Ctrl+N)")
        self.rename_button = QPushButton("Rename")
        self.rename_button.setToolTip("Rename the chat (or double-click it)")
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete the chat from the library")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the chat as Markdown, with its sources and page numbers")
        self.new_button.clicked.connect(self.new_requested)
        self.rename_button.clicked.connect(self._rename_current)
        self.delete_button.clicked.connect(lambda: self._emit_current(self.delete_requested))
        self.export_button.clicked.connect(lambda: self._emit_current(self.export_requested))
        self.buttons = QGridLayout()
        self.buttons.setContentsMargins(0, 0, 0, 0)
        self.buttons.setSpacing(4)
        self.columns = 0
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 8)
        layout.addWidget(self.heading)
        layout.addWidget(self.list, 1)
        layout.addLayout(self.buttons)
        self._place_buttons(len(self.button_list))
        self.one_row_width = layout.minimumSize().width()
        self._place_buttons(2)
        layout.invalidate()
        self.setMinimumWidth(layout.minimumSize().width())  # two rows of buttons when the window is narrow
        self._updating = False
        self.chats: list[ChatListing] = []

    @property
    def button_list(self) -> tuple[QPushButton, ...]:
        return self.new_button, self.rename_button, self.delete_button, self.export_button

    def _place_buttons(self, columns: int) -> None:
        """The buttons in one row, or two rows of two when the panel is narrower than one row."""
        if columns == self.columns:
            return
        self.columns = columns
        for position, button in enumerate(self.button_list):
            self.buttons.addWidget(button, position // columns, position % columns)
        for column in range(len(self.button_list)):
            self.buttons.setColumnStretch(column, 0)
        self.buttons.setColumnStretch(columns, 1)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._place_buttons(len(self.button_list) if self.width() >= self.one_row_width else 2)

    def current_key(self) -> str | None:
        items = self.list.selectedItems()
        return items[0].data(KEY) if items else None

    def set_chats(self, chats: list[ChatListing], current: str | None) -> None:
        """Show `chats` (newest first) with `current` selected."""
        self._updating = True
        try:
            self.chats = list(chats)
            self.list.clear()
            for chat in chats:
                item = QListWidgetItem(chat.title)
                item.setData(KEY, chat.key)
                turns = f"{chat.turns} question{'s' if chat.turns != 1 else ''}"
                item.setToolTip(f"{chat.title}\n{turns} · {format_ago(chat.updated_at) if chat.turns else 'new'}")
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
                self.list.addItem(item)
                if chat.key == current:
                    item.setSelected(True)
                    self.list.setCurrentItem(item)
        finally:
            self._updating = False
        self.heading.setText(f"<b>Chats</b> ({len(chats)})" if chats else "<b>Chats</b>")

    def set_enabled(self, enabled: bool) -> None:
        """Idle: everything works; busy: the list stays readable but nothing changes it."""
        has_chat = self.current_key() is not None
        self.list.setEnabled(enabled)
        self.new_button.setEnabled(enabled)
        for button in (self.rename_button, self.delete_button, self.export_button):
            button.setEnabled(enabled and has_chat)

    def _selection_changed(self) -> None:
        if not self._updating and (key := self.current_key()):
            self.selected.emit(key)

    def _item_changed(self, item: QListWidgetItem) -> None:
        if self._updating:
            return
        title = " ".join(item.text().split())
        before = next((c.title for c in self.chats if c.key == item.data(KEY)), "")
        if title and title != before:
            self.rename_requested.emit(item.data(KEY), title)
        elif not title:
            self._updating = True
            item.setText(before)  # a chat needs a name
            self._updating = False

    def _rename_current(self) -> None:
        items = self.list.selectedItems()
        if items:
            self.list.editItem(items[0])

    def _emit_current(self, signal) -> None:
        if key := self.current_key():
            signal.emit(key)
