"""The document library panel: one row per document with pages, tokens, cache state, size and last use."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from app.backend import LibraryEntry, format_bytes
from app.library import Library, format_ago

COLUMNS = ("Document", "Pages", "Tokens", "Cache", "Size", "Last used")


class LibraryPanel(QWidget):
    """Shows a Library; `selected(id)` when the user picks a document, `delete_requested(id)` on Delete."""

    selected = Signal(str)
    delete_requested = Signal(str)

    def __init__(self, library: Library, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.library = library
        heading = QLabel("<b>Library</b>")
        heading.setObjectName("libraryHeading")
        self.tree = QTreeWidget()
        self.tree.setObjectName("libraryTree")
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.setAcceptDrops(False)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        delete = QAction("Remove from library", self.tree)
        delete.setShortcut(QKeySequence.StandardKey.Delete)
        delete.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        delete.triggered.connect(self._delete_current)
        self.tree.addAction(delete)
        self.empty = QLabel("No documents yet.\nDrop a PDF or text file on the window, or press Ctrl+O.")
        self.empty.setObjectName("libraryEmpty")
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.footer = QLabel()
        self.footer.setObjectName("libraryFooter")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 4, 8)
        layout.addWidget(heading)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.empty, 1)
        layout.addWidget(self.footer)
        self._updating = False
        self.refresh()

    def current_id(self) -> str | None:
        items = self.tree.selectedItems()
        return items[0].data(0, Qt.ItemDataRole.UserRole) if items else None

    def refresh(self, select: str | None = None) -> None:
        """Show the library's rows (keeps or sets the selection). Rows stay where they are while the window is open,
        so that a row never moves under the pointer (opening a document makes it the most recently used): a new
        document comes in at the top, most recently used first; each row's cells are updated in place."""
        select = select or self.current_id()
        entries = {entry.id: entry for entry in self.library.entries()}  # most recently used first
        self._updating = True
        try:
            items = {}
            for index in reversed(range(self.tree.topLevelItemCount())):
                item = self.tree.topLevelItem(index)
                if item.data(0, Qt.ItemDataRole.UserRole) in entries:
                    items[item.data(0, Qt.ItemDataRole.UserRole)] = item
                else:
                    self.tree.takeTopLevelItem(index)
            new = [doc_id for doc_id in entries if doc_id not in items]
            for position, doc_id in enumerate(new):
                items[doc_id] = QTreeWidgetItem()
                items[doc_id].setData(0, Qt.ItemDataRole.UserRole, doc_id)
                self.tree.insertTopLevelItem(position, items[doc_id])
            for doc_id, item in items.items():
                _show_entry(item, entries[doc_id])
                item.setSelected(doc_id == select)
        finally:
            self._updating = False
        has_entries = len(self.library) > 0
        self.tree.setVisible(has_entries)
        self.empty.setVisible(not has_entries)
        total = self.library.total_cache_bytes()
        self.footer.setText(f"{len(self.library)} document{'s' if len(self.library) != 1 else ''}"
                            + (f" · caches {format_bytes(total)}" if total else ""))

    def rows(self) -> list[str]:
        """The document ids in the order the rows show them."""
        tree = self.tree
        return [tree.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole) for i in range(tree.topLevelItemCount())]

    def _selection_changed(self) -> None:
        if not self._updating and (doc_id := self.current_id()):
            self.selected.emit(doc_id)

    def _delete_current(self) -> None:
        if doc_id := self.current_id():
            self.delete_requested.emit(doc_id)


def _show_entry(item: QTreeWidgetItem, entry: LibraryEntry) -> None:
    """Fill a row's cells from its entry."""
    cells = (entry.title, f"{entry.pages:,}", f"{entry.tokens:,}", "cached" if entry.cached else "not cached",
             format_bytes(entry.cache_bytes) if entry.cache_bytes else "—", format_ago(entry.last_used))
    for column, text in enumerate(cells):
        item.setText(column, text)
        if column:
            item.setTextAlignment(column, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    item.setToolTip(0, f"{entry.title}\n{entry.source}")
