"""The main window: library, the open document's chats, input, progress, status bar; drives the EngineController."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.backend import (
    Answer,
    ChatListing,
    ChatState,
    EngineBackend,
    LibraryEntry,
    ModelInfo,
    OpenedDocument,
    Passage,
    PreparedDocument,
    format_bytes,
    model_words,
    supported_suffixes,
)
from app.library import Library
from app.resources import APP_NAME, resource_path
from app.runtime.banner import DOWNLOADING, FAILED, INFO, OFFER, PAUSED, READY, RuntimeBanner
from app.runtime.worker import ACTIVE, RuntimeController, RuntimeOptions
from app.settings import AppSettings, change_impact, save_settings
from app.widgets.chat_list import ChatListPanel
from app.widgets.chat_view import AnswerCard, ChatView
from app.widgets.error_banner import ErrorBanner
from app.widgets.library_panel import LibraryPanel
from app.widgets.model_picker import ModelPicker
from app.widgets.progress_panel import ProgressPanel, stage_words
from app.widgets.prompt_edit import PromptEdit
from app.widgets.settings_dialog import SettingsDialog
from app.widgets.source_view import SourceView
from app.widgets.status_bar import StatusBar
from app.widgets.text import rich_text, source_share_words
from app.widgets.theme import app_icon
from app.widgets.welcome import WelcomePage
from app.worker import (
    ANSWER_JOBS,
    CHAT,
    LOAD,
    OPEN,
    PULL,
    REMOVE,
    REOPEN,
    SETTINGS,
    TOKEN,
    EngineController,
    ModelController,
)

MIN_CHAT_WIDTH = 560  # opening the source viewer narrows the library panel, down to its minimum, to keep this
MIN_LIBRARY_WIDTH = 300
QUIT_WAIT_MS = 400  # how long closing the window waits for the job in flight to see its cancel flag


class MainWindow(QMainWindow):
    def __init__(self, backend: EngineBackend, settings: AppSettings, settings_path: Path | None = None,
                 library: Library | None = None, load_model: bool = True,
                 gpu_runtime: RuntimeOptions | None = None, first_run: bool = False) -> None:
        """``gpu_runtime``: how to check for a GPU and fetch its runtime; by default the real check when the
        backend offers it (RealBackend), none with the fake backend. ``first_run``: no settings saved yet, so the
        start screen offers the model picker (the bundled model works offline meanwhile)."""
        super().__init__()
        self.settings = settings
        self.settings_path = settings_path
        self.library = library or Library()
        self.controller = EngineController(backend, self)
        self.models = ModelController(backend, self)
        self.model_picker: ModelPicker | None = None
        if gpu_runtime is None and getattr(backend, "offers_gpu_runtime", False):
            gpu_runtime = RuntimeOptions()
        self.runtime = RuntimeController(gpu_runtime, self) if gpu_runtime is not None else None
        self.model_info: ModelInfo | None = None
        self.chats: dict[str, ChatView] = {}  # chat key -> its view (of the open document's chats)
        self.current_doc: str | None = None
        self.current_chat: str | None = None  # the key of the chat shown
        self.chats_of: str | None = None  # the document whose chats the chat list shows
        self.editing: int | None = None  # the turn being edited (edit and resend), None when asking anew
        self.active_card: AnswerCard | None = None
        self.opening_path = ""  # the file the latest open job reads
        self.loading_model = ""  # the model being loaded, in words
        self.open_in_engine: set[str] = set()  # documents the engine has open in this run
        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.resize(1280, 820)
        self.setMinimumSize(QSize(640, 480))
        self._build()
        self._connect()
        self.welcome.show_model_offer(first_run)
        if load_model:
            self.controller.load_model(settings)
        if self.runtime is not None:
            self._connect_runtime(self.runtime)
            # no automatic multi-GB download when the settings turn it off or ask for the CPU
            self.runtime.start(settings.gpu_runtime_auto_download and settings.engine.device != "cpu")

    # -- building ------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.library_panel = LibraryPanel(self.library)
        self.chat_list = ChatListPanel()
        self.runtime_banner = RuntimeBanner()
        self.progress_panel = ProgressPanel()
        self.error_banner = ErrorBanner()
        self.welcome = WelcomePage(self.open_dialog, self.open_sample, self.open_model_picker, self.keep_bundled_model)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.welcome)
        self.prompt = PromptEdit()
        self.prompt.submitted.connect(self.send)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the answer or the job that is running (Esc)")
        self.stop_button.clicked.connect(self.stop)
        self.new_chat_button = QPushButton("New chat")
        self.new_chat_button.setToolTip("A new chat on this document; the earlier chats stay in the list (Ctrl+N)")
        self.new_chat_button.clicked.connect(self.new_chat)
        self.edit_note = QLabel()
        self.edit_note.setObjectName("editNote")
        self.edit_note.setWordWrap(True)
        self.cancel_edit_button = QPushButton("Cancel edit")
        self.cancel_edit_button.clicked.connect(self.cancel_edit)
        edit_row = QHBoxLayout()
        edit_row.setContentsMargins(8, 0, 0, 0)
        edit_row.addWidget(self.edit_note, 1)
        edit_row.addWidget(self.cancel_edit_button)
        self.edit_bar = QWidget()
        self.edit_bar.setLayout(edit_row)
        self.edit_bar.hide()
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        input_row = QHBoxLayout()
        input_row.addWidget(self.prompt, 1)
        input_row.addLayout(buttons)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(4, 8, 8, 8)
        self.doc_title = QLabel()
        self.doc_title.setObjectName("docTitle")
        self.doc_title.setWordWrap(True)
        title_row = QHBoxLayout()
        title_row.addWidget(self.doc_title, 1)
        title_row.addWidget(self.new_chat_button)
        self.title_row = QWidget()
        self.title_row.setLayout(title_row)
        title_row.setContentsMargins(8, 0, 0, 0)
        right_layout.addWidget(self.title_row)
        right_layout.addWidget(self.progress_panel)
        right_layout.addWidget(self.error_banner)
        right_layout.addWidget(self.stack, 1)
        right_layout.addWidget(self.edit_bar)
        right_layout.addLayout(input_row)
        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.library_panel)
        left.addWidget(self.chat_list)
        left.setChildrenCollapsible(False)
        left.setSizes([480, 320])
        self.library_side = left
        self.source_view = SourceView()  # a clicked source on its page, beside the chat
        self.source_view.hide()
        self.source_view.closed.connect(self.library_side.show)
        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.addWidget(self.source_view)
        splitter.setStretchFactor(0, 1)  # a narrow window narrows both sides, the chat less
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([380, 900, 0])
        splitter.setChildrenCollapsible(False)
        self.splitter = splitter
        central = QWidget()
        central_layout = QVBoxLayout(central)
        central_layout.setContentsMargins(0, 0, 0, 0)
        central_layout.setSpacing(0)
        banner_row = QHBoxLayout()
        banner_row.setContentsMargins(8, 6, 8, 0)
        banner_row.addWidget(self.runtime_banner)
        central_layout.addLayout(banner_row)
        central_layout.addWidget(splitter, 1)
        self.setCentralWidget(central)
        self._build_status_bar()
        self._build_menus()
        self._update_controls()

    def _build_status_bar(self) -> None:
        bar = StatusBar()
        self.setStatusBar(bar)
        self.model_label = bar.add_label("Model: loading…")
        self.device_label = bar.add_label()
        self.memory_label = bar.add_label()
        self.context_label = bar.add_label()
        self.speed_label = bar.add_label()

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = self._action(file_menu, "&Open document…", QKeySequence.StandardKey.Open, self.open_dialog)
        self.settings_action = self._action(file_menu, "&Settings…", QKeySequence("Ctrl+,"), self.open_settings)
        self.models_action = self._action(file_menu, "&Models…", QKeySequence("Ctrl+M"), self.open_model_picker)
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", QKeySequence.StandardKey.Quit, self.close)
        chat_menu = self.menuBar().addMenu("&Chat")
        self._action(chat_menu, "&New chat", QKeySequence("Ctrl+N"), self.new_chat)
        self._action(chat_menu, "&Regenerate last answer", QKeySequence("Ctrl+R"), self.regenerate)
        self._action(chat_menu, "&Export chat…", QKeySequence("Ctrl+E"), self.export_chat)
        self._action(chat_menu, "&Copy last answer", QKeySequence("Ctrl+Shift+C"), self.copy_last)
        self._action(chat_menu, "&Stop", QKeySequence(Qt.Key.Key_Escape), self.stop)
        help_menu = self.menuBar().addMenu("&Help")
        self._action(help_menu, "&About Folio", None, self.about)

    def _action(self, menu, text: str, shortcut, slot) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        action.triggered.connect(slot)
        menu.addAction(action)
        self.addAction(action)
        return action

    def _connect(self) -> None:
        worker = self.controller.worker
        worker.model_loading.connect(self._model_loading)
        worker.model_loaded.connect(self._model_loaded)
        worker.progress.connect(self._progress)
        worker.document_opened.connect(self._document_opened)
        worker.document_ready.connect(self._document_ready)
        worker.token.connect(self._token)
        worker.finished.connect(self._finished)
        worker.failed.connect(self._failed)
        worker.cancelled.connect(self._cancelled)
        worker.memory.connect(self.memory_label.setText)
        worker.library_listed.connect(self._library_listed)
        worker.library_reset.connect(self._library_reset)
        worker.chats_listed.connect(self._chats_listed)
        worker.chat_opened.connect(self._chat_opened)
        worker.chat_exported.connect(self._chat_exported)  # bound methods run on the GUI thread; lambdas would not
        self.controller.busy_changed.connect(self._busy_changed)
        self.controller.job_started.connect(self._job_started)
        self.progress_panel.cancel_requested.connect(self.stop)
        self.library_panel.selected.connect(self.show_document)
        self.library_panel.delete_requested.connect(self.delete_document)
        self.chat_list.selected.connect(self.open_chat)
        self.chat_list.new_requested.connect(self.new_chat)
        self.chat_list.rename_requested.connect(self.rename_chat)
        self.chat_list.delete_requested.connect(self.delete_chat)
        self.chat_list.export_requested.connect(self.export_chat)

    def _connect_runtime(self, runtime: RuntimeController) -> None:
        worker = runtime.worker
        worker.status.connect(self._runtime_status)
        worker.progress.connect(self.runtime_banner.update_progress)
        worker.ready.connect(self._runtime_ready)  # bound methods: queued to this (the GUI) thread
        worker.failed.connect(self._runtime_failed)
        worker.cancelled.connect(self._runtime_cancelled)
        self.runtime_banner.download_requested.connect(runtime.download)
        self.runtime_banner.cancel_requested.connect(runtime.cancel)
        self.runtime_banner.restart_requested.connect(self.restart_for_gpu)
        self.runtime_banner.hidden_by_user.connect(self._runtime_banner_hidden)

    # -- user actions --------------------------------------------------------------------------------
    def open_dialog(self) -> None:
        patterns = " ".join(f"*{suffix}" for suffix in supported_suffixes())
        paths, _ = QFileDialog.getOpenFileNames(self, "Open documents", "", f"Documents ({patterns});;All files (*)")
        self.open_files(paths)

    def open_sample(self) -> None:
        self.open_files([str(resource_path("sample.md"))])

    def open_files(self, paths: list[str]) -> None:
        for path in paths:
            self.controller.open_document(path)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()
            self.statusBar().showMessage("Drop to open the document", 2000)
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_files(paths)

    @property
    def chat_view(self) -> ChatView | None:
        """The view of the chat shown (None before a document's chat is open)."""
        return self.chats.get(self.current_chat or "")

    def send(self) -> None:
        question = self.prompt.toPlainText().strip()
        if not question:
            self.statusBar().showMessage("Type a question first.", 3000)
            return
        if self.current_doc is None:
            self.error_banner.show_message("Open a document first: drop a file on the window or press Ctrl+O.")
            return
        if self.controller.busy or self.chat_view is None:
            self.statusBar().showMessage("Folio is busy: wait for the current job or press Esc to stop it.", 4000)
            return
        self.prompt.clear()
        self.error_banner.hide()
        view = self.chat_view
        if self.editing is not None:
            turn, self.editing = self.editing, None
            self.edit_bar.hide()
            view.truncate(turn)
            self.active_card = view.add_question(question)
            self.controller.edit(self.current_doc, view.key, turn, question)
        else:
            self.active_card = view.add_question(question)
            self.controller.ask(self.current_doc, view.key, question)

    def begin_edit(self, turn: int) -> None:
        """Put question `turn` into the question box; sending it drops that turn and the ones after it."""
        view = self.chat_view
        if view is None or self.controller.busy or not 0 <= turn < len(view.questions):
            return
        self.editing = turn
        self.prompt.setPlainText(view.questions[turn].question)
        later = len(view.questions) - turn - 1
        self.edit_note.setText(f"Editing question {turn + 1}: Enter sends it again"
                               + (f" and drops the {later} answer{'s' if later != 1 else ''} after it" if later else "")
                               + ".")
        self.edit_bar.show()
        self.prompt.setFocus()

    def cancel_edit(self) -> None:
        self.editing = None
        self.edit_bar.hide()
        self.prompt.clear()

    def stop(self) -> None:
        if self.controller.busy:
            self.controller.cancel()
            self.progress_panel.cancel_button.setEnabled(False)
            self.statusBar().showMessage("Stopping…", 2000)
        elif self.editing is not None:
            self.cancel_edit()

    def regenerate(self) -> None:
        view = self.chat_view
        if view is None or self.controller.busy or not view.cards or not view.last_card.done:
            return
        self.error_banner.hide()
        self.active_card = view.restart_last()
        self.controller.regenerate(self.current_doc, view.key)

    def select_version(self, version: int) -> None:
        if self.chat_view is not None and not self.controller.busy:
            self.controller.chat(self.current_doc, "select", self.chat_view.key, version)

    def copy_last(self) -> None:
        if self.chat_view and self.chat_view.last_card:
            self.chat_view.last_card.copy()

    def new_chat(self) -> None:
        """A new chat on the document: the chats so far stay in the list; the document stays cached."""
        if self.current_doc is None or self.controller.busy:
            return
        self.cancel_edit()
        self.controller.chat(self.current_doc, "open", None)

    def open_chat(self, key: str) -> None:
        if self.current_doc is not None and key != self.current_chat:
            self.cancel_edit()
            self.controller.chat(self.current_doc, "open", key)

    def rename_chat(self, key: str, title: str) -> None:
        if self.current_doc is not None:
            self.controller.chat(self.current_doc, "rename", key, title)

    def delete_chat(self, key: str) -> None:
        if self.current_doc is None or self.controller.busy:
            return
        view = self.chats.pop(key, None)
        if view is not None:
            self.stack.removeWidget(view)
            view.deleteLater()
        if key == self.current_chat:
            self.current_chat = None  # the list that comes back opens the next chat
        self.controller.chat(self.current_doc, "delete", key)

    def export_chat(self, key: str | None = None, path: str | None = None) -> None:
        """Save chat `key` (the one shown by default) as Markdown; asks where unless `path` is given."""
        key = key or self.current_chat
        if self.current_doc is None or key is None:
            return
        if path is None:
            view = self.chats.get(key)
            name = "".join(c if c.isalnum() or c in " -_" else "_" for c in (view.state.title if view and view.state
                                                                               else "chat")).strip() or "chat"
            path, _ = QFileDialog.getSaveFileName(self, "Export the chat", f"{name}.md", "Markdown (*.md)")
            if not path:
                return
        self.controller.chat(self.current_doc, "export", key, path)

    def open_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self, choose_model=self.open_model_picker)
        if dialog.exec() and dialog.result_settings is not None:
            self.apply_settings(dialog.result_settings)

    def open_model_picker(self, on_chosen=None, parent=None) -> ModelPicker:
        """The model picker, its work on the model thread. A model chosen there is applied (the model reloads), or
        handed to `on_chosen(spec, weights)` (the settings dialog fills its fields with it)."""
        if self.model_picker is not None:
            self.model_picker.raise_()
            return self.model_picker
        picker = ModelPicker(self.settings.engine.model, self.settings.engine.weights, parent or self)
        worker = self.models.worker
        worker.listed.connect(picker.show_choices)
        worker.progress.connect(picker.show_progress)
        worker.pulled.connect(self._model_pulled)
        worker.removed.connect(self._model_removed)
        worker.failed.connect(self._model_job_failed)
        worker.cancelled.connect(self._model_job_cancelled)
        worker.token_saved.connect(picker.token_saved)
        self.models.busy_changed.connect(picker.set_busy)
        picker.pull_requested.connect(self.models.pull)
        picker.remove_requested.connect(self.models.remove)
        picker.cancel_requested.connect(self.models.cancel)
        picker.token_entered.connect(self.models.save_token)
        picker.set_busy(self.models.busy)
        picker.finished.connect(lambda _result: self._model_picker_closed(picker, on_chosen))
        self.model_picker = picker
        picker.open()
        self.models.list_models()
        return picker

    def _model_picker_closed(self, picker: ModelPicker, on_chosen) -> None:
        worker = self.models.worker
        for signal, slot in ((worker.listed, picker.show_choices), (worker.progress, picker.show_progress),
                             (worker.token_saved, picker.token_saved), (self.models.busy_changed, picker.set_busy)):
            signal.disconnect(slot)
        for signal, slot in ((worker.pulled, self._model_pulled), (worker.removed, self._model_removed),
                             (worker.failed, self._model_job_failed), (worker.cancelled, self._model_job_cancelled)):
            signal.disconnect(slot)
        self.model_picker = None
        picker.deleteLater()
        if picker.chosen is None:
            return
        spec, weights = picker.chosen
        if on_chosen is not None:
            on_chosen(spec, weights)
        else:
            self.welcome.show_model_offer(False)
            self.apply_settings(self.settings.with_changes(model=spec, weights=weights))

    def keep_bundled_model(self) -> None:
        """The first run's offer declined: save the settings, so it is not made again."""
        self.welcome.show_model_offer(False)
        self.apply_settings(self.settings)

    def _model_pulled(self, spec: str, _folder: str) -> None:
        if self.model_picker is not None:
            self.model_picker.download_finished(spec)
        self.models.list_models()

    def _model_removed(self, spec: str, freed: int) -> None:
        if self.model_picker is not None:
            self.model_picker.show_message(f"Removed {spec}: {format_bytes(freed)} freed." if freed
                                           else f"{spec} was not downloaded.")
        self.models.list_models()

    def _model_job_failed(self, job: str, message: str) -> None:
        if self.model_picker is not None:
            self.model_picker.show_error(message)
        if job in (PULL, REMOVE, TOKEN):
            self.models.list_models()

    def _model_job_cancelled(self, job: str) -> None:
        if self.model_picker is not None and job == PULL:
            self.model_picker.download_cancelled()

    def apply_settings(self, settings: AppSettings) -> None:
        """Save and apply `settings`: reload the model or mark caches for rebuild where needed."""
        impact = change_impact(self.settings, settings)
        self.settings = settings
        self._save_settings()
        if impact.reload_model:
            self.open_in_engine.clear()
            self.controller.load_model(settings)
        else:
            self.controller.apply_settings(settings)
        if impact.rebuild_caches:  # the K/V are rebuilt: each document is read again at its next question
            for entry in self.library.entries():
                self.library.update(entry.id, cached=False, cache_bytes=0)
            self.library_panel.refresh()

    def _save_settings(self) -> None:
        try:
            save_settings(self.settings, self.settings_path)
        except OSError as error:
            self.error_banner.show_message(f"The settings could not be saved ({error.strerror}). "
                                           "They apply until Folio closes.")

    def show_document(self, doc_id: str) -> None:
        entry = self.library.get(doc_id)
        if entry is None:
            return
        if doc_id != self.current_doc:  # another document: its own chats and numbers replace these
            self.cancel_edit()
            self._drop_chat_views()
            self.source_view.close_source()
            self._show_speed(None)
        self.current_doc = doc_id
        if doc_id not in self.open_in_engine and self.model_info is not None:
            self.open_in_engine.add(doc_id)
            self.controller.reopen(doc_id)  # a library document from an earlier run: load its cache
        if self.chats_of != doc_id and self.model_info is not None:
            self.chats_of = doc_id
            self.chat_list.set_chats([], None)
            self.controller.chat(doc_id, "list")  # then the most recent chat opens (_chats_listed)
        pages = f"{entry.pages:,} page{'s' if entry.pages != 1 else ''}"
        self.doc_title.setText(f"<b>{rich_text(entry.title)}</b> — {pages}, {entry.tokens:,} tokens"
                               + (" · cached" if entry.cached else ""))
        if self.chat_view is not None and self.chat_view.state is not None:
            self._show_context(self.chat_view.state)
        elif self.model_info and self.model_info.max_positions:
            self.context_label.setText(f"{entry.tokens:,} of {self.model_info.max_positions:,} tokens")
        self.library_panel.refresh(select=doc_id)
        self._update_controls()
        self.prompt.setFocus()

    def delete_document(self, doc_id: str) -> None:
        if self.controller.busy:
            self.statusBar().showMessage("Wait for the current job (or press Esc) before removing documents.", 4000)
            return
        self.library.delete(doc_id)
        self.controller.forget(doc_id)
        if self.current_doc == doc_id:
            self._drop_chat_views()
            self.current_doc = None
            remaining = self.library.entries()
            if remaining:
                self.show_document(remaining[0].id)
            else:
                self.stack.setCurrentWidget(self.welcome)
        self.library_panel.refresh()
        self._update_controls()

    def restart_for_gpu(self) -> None:
        """Start Folio again with the ready GPU runtime, then close this window (not while a job runs)."""
        if self.runtime is None or self.runtime.ready_path is None:
            return
        if self.controller.busy:
            self.statusBar().showMessage("Folio is busy: wait for the current job or press Esc, then restart.", 5000)
            return
        try:
            self.runtime.restart()
        except OSError as error:
            self.runtime_banner.set_state(FAILED, f"Folio could not start again ({error.strerror or error}). "
                                                  "Close Folio and start it again to use the GPU.")
            return
        self.close()

    def about(self) -> None:
        QMessageBox.about(self, "About Folio", "<b>Folio</b><br>Ask questions about whole long documents with a "
                          "local LLM and RetrievalAttention (arXiv 2409.10516).")

    # -- GPU runtime events --------------------------------------------------------------------------
    def _runtime_status(self, state: str, message: str) -> None:
        if state == ACTIVE:  # already on the GPU: nothing to do, say it once
            self.runtime_banner.hide()
            self.statusBar().showMessage(message, 8000)
        else:  # the banner shows the offer and the download as such, everything else as information
            state = state if state in (OFFER, DOWNLOADING) else INFO
            self.runtime_banner.set_state(state, message)
            if state == INFO and message == self.settings.hidden_notice:
                self.runtime_banner.hide()  # the user hid this line before

    def _runtime_banner_hidden(self, state: str, message: str) -> None:
        """Hiding a line of information is remembered (a download's progress or an offer come back as they are)."""
        if state == INFO and message != self.settings.hidden_notice:
            self.settings = self.settings.with_changes(hidden_notice=message)
            self._save_settings()

    def _runtime_ready(self, _path: str, message: str) -> None:
        self.runtime_banner.set_state(READY, message)

    def _runtime_failed(self, message: str) -> None:
        self.runtime_banner.set_state(FAILED, message)

    def _runtime_cancelled(self, message: str) -> None:
        self.runtime_banner.set_state(PAUSED, message)

    # -- engine events -------------------------------------------------------------------------------
    def _job_started(self, job: str, args: tuple) -> None:
        if job == LOAD:
            self.model_label.setText("Model: loading…")
            self.loading_model = model_words(args[0].engine.model)
            self.progress_panel.start("Loading the model", f"Loading {self.loading_model}…")
            self.welcome.model_line.setText(f"Loading {self.loading_model}…")
        elif job == OPEN:
            self.opening_path = args[0]
            self.progress_panel.start(f"Opening {Path(args[0]).name}", "Checking that it fits…")
        elif job == REOPEN:
            entry = self.library.get(args[0])
            self.progress_panel.start(f"Opening {entry.title if entry else 'the document'}",
                                      "From the library: loading its saved cache…")
        elif job in ANSWER_JOBS:
            self.progress_panel.hide()
            self._show_speed(None)  # the earlier answer's numbers are not this one's (nor a stopped one's)
        elif job == SETTINGS:
            self.statusBar().showMessage("Applying the new settings…", 2000)

    def _progress(self, stage: str, done: int, total: int, unit: str, eta_s: float) -> None:
        answering = self.controller.current in ANSWER_JOBS
        if answering and self.active_card is not None and self.active_card.text:
            return  # decoding has started: the streaming answer is the progress
        self.progress_panel.update_progress(stage, done, total, unit, eta_s)
        if answering:
            self.progress_panel.title.setText("<b>Preparing the answer</b>")
            self.progress_panel.set_detail(stage_words(stage))

    def _model_loading(self, device: str) -> None:
        self.progress_panel.set_detail(f"Loading {self.loading_model} on {device}")
        self.welcome.model_line.setText(f"Loading {self.loading_model} on {device}…")

    def _model_loaded(self, info: ModelInfo) -> None:
        self.model_info = info
        name = self.loading_model or info.name  # in words, as while loading
        self.model_label.setText(f"Model: {name}")
        weights = {"8bit": " · 8-bit weights", "4bit": " · 4-bit weights"}.get(info.weights, "")
        self.device_label.setText(f"{info.device} · {info.dtype}{weights}")
        self.welcome.model_line.setText(f"Model ready: {name} on {info.device_words or info.device}, context "
                                        f"{info.max_positions:,} tokens")
        self.statusBar().showMessage(f"Model loaded in {info.load_s:.1f} s", 4000)
        self.chats_of = None  # list the chats again: a chat of another model says so
        if info.library_damaged:
            self.error_banner.show_message(info.library_damaged, "Start a new library", self.controller.reset_library)
        if self.current_doc:
            self.show_document(self.current_doc)

    def _library_reset(self, message: str) -> None:
        self.error_banner.hide()
        self.statusBar().showMessage(message, 8000)

    def _document_opened(self, opened: OpenedDocument) -> None:
        detail = opened.fit.summary()
        if opened.fit.warnings:
            detail += "\n" + " ".join(opened.fit.warnings)
        self.progress_panel.set_detail(detail)
        previous = self.library.get(opened.id)
        entry = LibraryEntry(opened.id, opened.title, opened.pages, opened.tokens,
                             cached=opened.cached or bool(previous and previous.cached),
                             cache_bytes=previous.cache_bytes if previous else 0, last_used=time.time(),
                             source=opened.source)
        self.library.put(entry)
        self.open_in_engine.add(opened.id)
        self.show_document(opened.id)
        if opened.warnings:  # e.g. a damaged PDF that was repaired with pages lost: the user must know
            self.error_banner.show_message(" ".join(opened.warnings))

    def _document_ready(self, prepared: PreparedDocument) -> None:
        entry = self.library.update(prepared.id, cached=True, cache_bytes=prepared.cache_bytes, last_used=time.time())
        self.progress_panel.finish()
        if entry is None:
            return
        if prepared.from_cache:
            message = f"{entry.title}: cached — ready in {prepared.seconds:.1f} s"
        else:
            message = f"{entry.title}: ready — {entry.tokens:,} tokens read in {prepared.seconds:.1f} s"
        if prepared.notice:
            message += f" ({prepared.notice})"
        self.statusBar().showMessage(message, 8000)
        if self.current_doc == prepared.id:
            self.show_document(prepared.id)

    def _library_listed(self, entries: list[LibraryEntry]) -> None:
        """The persistent library's rows (engine.store) replace the ones the window has for them."""
        for entry in entries:
            self.library.put(entry)
        self.library_panel.refresh()

    def _token(self, _key: str, text: str) -> None:
        if self.active_card is not None:
            if not self.active_card.text:
                self.progress_panel.finish()
            self.active_card.append(text)

    def _finished(self, key: str, answer: Answer) -> None:
        if self.active_card is not None:
            self.active_card.finish(answer)
            self.active_card = None
        if key in self.chats:  # an answer in the open document (the user may have switched meanwhile)
            self._show_speed(answer)
        if answer.notice:
            self.error_banner.show_message(answer.notice)
        if self.current_doc and self.library.update(self.current_doc, cached=True, last_used=time.time()):
            self.library_panel.refresh()

    def _show_speed(self, answer: Answer | None) -> None:
        """The status bar's numbers of `answer` (the open document's latest), or none."""
        if answer is None:
            self.speed_label.setText("")
            return
        mode = f"{answer.attention} attention · " if answer.attention else ""
        self.speed_label.setText(f"{mode}{answer.speed_words}")
        self.speed_label.setToolTip("\n".join(filter(None, [self.speed_label.text(), answer.attention_reason])))

    def _chats_listed(self, doc_id: str, chats: list[ChatListing]) -> None:
        if doc_id != self.current_doc:
            return
        keys = {chat.key for chat in chats}
        for key in [k for k in self.chats if k not in keys and k != self.current_chat]:  # deleted chats
            view = self.chats.pop(key)
            self.stack.removeWidget(view)
            view.deleteLater()
        self.chat_list.set_chats(chats, self.current_chat)
        if self.current_chat is None or self.current_chat not in keys:  # nothing open yet, or it was deleted
            self.current_chat = None
            self.controller.chat(doc_id, "open", chats[0].key if chats else None)
        self._update_controls()

    def _chat_opened(self, state: ChatState) -> None:
        if state.doc_id != self.current_doc:
            return
        view = self.chats.get(state.key)
        if view is None:
            entry = self.library.get(state.doc_id)
            view = ChatView(state.key, entry.title if entry else state.title)
            view.regenerate_requested.connect(self.regenerate)
            view.passage_clicked.connect(self._passage_clicked)
            view.edit_requested.connect(self.begin_edit)
            view.version_requested.connect(self.select_version)
            view.new_chat_requested.connect(self.new_chat)
            self.chats[state.key] = view
            self.stack.addWidget(view)
        self.active_card = None  # the chat's state supersedes what was streamed (a stopped answer is in it)
        view.load(state, idle=not self.controller.busy or self.controller.current == CHAT)
        if self.current_chat != state.key:
            self.current_chat = state.key
            self.chat_list.set_chats(self.chat_list.chats, state.key)
        self.stack.setCurrentWidget(view)
        self._show_context(state)
        self._update_controls()

    def _drop_chat_views(self) -> None:
        for view in self.chats.values():
            self.stack.removeWidget(view)
            view.deleteLater()
        self.chats.clear()
        self.current_chat = self.chats_of = None
        self.chat_list.set_chats([], None)

    def _chat_exported(self, path: str) -> None:
        self.statusBar().showMessage(f"Chat exported to {path}", 8000)

    def _show_context(self, state: ChatState) -> None:
        """The chat's own context in the status bar: the document and its turns, of the model's positions."""
        if state.context_max:
            self.context_label.setText(f"{state.tokens_used:,} of {state.context_max:,} tokens")

    def _failed(self, job: str, message: str) -> None:
        if job == OPEN and self.opening_path:  # one of several files may fail: each is reported, by name
            name = Path(self.opening_path).name
            self.error_banner.add_message(message if name in message else f"{name}: {message}")
        else:
            self.error_banner.show_message(message)
        if job in ANSWER_JOBS and self.active_card is not None:
            self.active_card.finish(note="No answer: see the message above.")
            self.active_card = None
        if job == LOAD:
            self.model_label.setText("Model: not loaded")
            self.welcome.model_line.setText("The model did not load: see the message above, then fix it in "
                                            "Settings (Ctrl+,).")
        self.progress_panel.finish()

    def _cancelled(self, job: str) -> None:
        if job in ANSWER_JOBS and self.active_card is not None:
            self.active_card.finish(note="Stopped.")
            self.active_card = None
        self.progress_panel.finish()
        self.statusBar().showMessage("Stopped." if job in ANSWER_JOBS else "Cancelled.", 4000)
        self.library_panel.refresh()

    def _busy_changed(self, busy: bool) -> None:
        if not busy:
            self.progress_panel.finish()
        self._update_controls()

    def _update_controls(self) -> None:
        busy = self.controller.busy
        has_doc = self.current_doc is not None
        self.send_button.setEnabled(has_doc and not busy)
        self.stop_button.setEnabled(busy)
        self.new_chat_button.setEnabled(has_doc and not busy)
        self.title_row.setVisible(has_doc)
        self.chat_list.setVisible(has_doc)
        self.chat_list.set_enabled(not busy)
        if self.chat_view is not None:
            self.chat_view.set_idle(not busy)

    def _passage_clicked(self, passage: Passage) -> None:
        self.statusBar().showMessage(f"Passage on page {passage.page} ({source_share_words(passage.score)})", 6000)
        entry = self.library.get(self.current_doc or "")
        if entry is None:
            return
        if self.source_view.isHidden():  # the chat and the source side by side; the library gives way first where
            left, right, _ = self.splitter.sizes()  # the chat would be narrow
            source = max(self.source_view.minimumWidth(), right * 9 // 20)
            chat = right - source
            give = max(0, min(MIN_CHAT_WIDTH - chat, left - MIN_LIBRARY_WIDTH))
            if chat + give < MIN_CHAT_WIDTH:  # a narrow window: the library steps aside until the source is closed,
                self.library_side.hide()  # and the chat keeps what the source can spare
                source = max(self.source_view.minimumWidth(), left + right - MIN_CHAT_WIDTH)
                chat, give = right - source, left
            self.source_view.show()
            self.splitter.setSizes([left - give, chat + give, source])
        self.source_view.show_passage(entry.source, entry.title, passage)  # sized first: the page fits its width

    def closeEvent(self, event: QCloseEvent) -> None:
        """Close at once: cancel what runs and give it QUIT_WAIT_MS to stop. An answer stops at its next token (and
        is kept); a long prefill chunk or an index build is not waited for: python -m app then ends the process (the
        library survives a process that ends mid-write)."""
        self.hide()
        if self.runtime is not None:
            self.runtime.shutdown()  # a download stops at its next chunk
        self.models.shutdown(QUIT_WAIT_MS)
        self.controller.shutdown(QUIT_WAIT_MS)
        super().closeEvent(event)
