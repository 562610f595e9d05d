"""The main window: library, per-document chats, input, progress, status bar; drives the EngineController."""

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
    EngineBackend,
    LibraryEntry,
    ModelInfo,
    OpenedDocument,
    Passage,
    PreparedDocument,
    supported_suffixes,
)
from app.library import Library
from app.resources import APP_NAME, resource_path
from app.runtime.banner import DOWNLOADING, FAILED, INFO, OFFER, PAUSED, READY, RuntimeBanner
from app.runtime.worker import ACTIVE, RuntimeController, RuntimeOptions
from app.settings import AppSettings, change_impact, save_settings
from app.widgets.chat_view import AnswerCard, ChatView
from app.widgets.error_banner import ErrorBanner
from app.widgets.library_panel import LibraryPanel
from app.widgets.progress_panel import STAGE_NAMES, ProgressPanel
from app.widgets.prompt_edit import PromptEdit
from app.widgets.settings_dialog import SettingsDialog
from app.widgets.theme import app_icon
from app.widgets.welcome import WelcomePage
from app.worker import ASK, LOAD, OPEN, REOPEN, SETTINGS, EngineController


class MainWindow(QMainWindow):
    def __init__(self, backend: EngineBackend, settings: AppSettings, settings_path: Path | None = None,
                 library: Library | None = None, load_model: bool = True,
                 gpu_runtime: RuntimeOptions | None = None) -> None:
        """``gpu_runtime``: how to check for a GPU and fetch its runtime; by default the real check when the
        backend offers it (RealBackend), none with the fake backend."""
        super().__init__()
        self.settings = settings
        self.settings_path = settings_path
        self.library = library or Library()
        self.controller = EngineController(backend, self)
        if gpu_runtime is None and getattr(backend, "offers_gpu_runtime", False):
            gpu_runtime = RuntimeOptions()
        self.runtime = RuntimeController(gpu_runtime, self) if gpu_runtime is not None else None
        self.model_info: ModelInfo | None = None
        self.chats: dict[str, ChatView] = {}
        self.current_doc: str | None = None
        self.active_card: AnswerCard | None = None
        self.last_answer: Answer | None = None
        self.opening: dict[str, float] = {}  # path -> when its open job started
        self.open_in_engine: set[str] = set()  # documents the engine has open in this run
        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.resize(1280, 820)
        self.setMinimumSize(QSize(820, 520))
        self._build()
        self._connect()
        if load_model:
            self.controller.load_model(settings)
        if self.runtime is not None:
            self._connect_runtime(self.runtime)
            # no automatic multi-GB download when the settings turn it off or ask for the CPU
            self.runtime.start(settings.gpu_runtime_auto_download and settings.engine.device != "cpu")

    # -- building ------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.library_panel = LibraryPanel(self.library)
        self.runtime_banner = RuntimeBanner()
        self.progress_panel = ProgressPanel()
        self.error_banner = ErrorBanner()
        self.welcome = WelcomePage(self.open_dialog, self.open_sample)
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
        self.new_chat_button.setToolTip("Clear this document's questions and answers (Ctrl+N)")
        self.new_chat_button.clicked.connect(self.new_chat)
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
        right_layout.addLayout(input_row)
        splitter = QSplitter()
        splitter.addWidget(self.library_panel)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([420, 860])
        splitter.setChildrenCollapsible(False)
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
        bar = self.statusBar()
        self.model_label = QLabel("Model: loading…")
        self.device_label = QLabel("")
        self.memory_label = QLabel("")
        self.context_label = QLabel("")
        self.speed_label = QLabel("")
        for label in (self.model_label, self.device_label, self.memory_label, self.context_label, self.speed_label):
            label.setContentsMargins(6, 0, 6, 0)
            bar.addPermanentWidget(label)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = self._action(file_menu, "&Open document…", QKeySequence.StandardKey.Open, self.open_dialog)
        self.settings_action = self._action(file_menu, "&Settings…", QKeySequence("Ctrl+,"), self.open_settings)
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", QKeySequence.StandardKey.Quit, self.close)
        chat_menu = self.menuBar().addMenu("&Chat")
        self._action(chat_menu, "&New chat", QKeySequence("Ctrl+N"), self.new_chat)
        self._action(chat_menu, "&Regenerate last answer", QKeySequence("Ctrl+R"), self.regenerate)
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
        self.controller.busy_changed.connect(self._busy_changed)
        self.controller.job_started.connect(self._job_started)
        self.progress_panel.cancel_requested.connect(self.stop)
        self.library_panel.selected.connect(self.show_document)
        self.library_panel.delete_requested.connect(self.delete_document)

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

    def send(self) -> None:
        question = self.prompt.toPlainText().strip()
        if not question:
            return
        if self.current_doc is None:
            self.error_banner.show_message("Open a document first: drop a file on the window or press Ctrl+O.")
            return
        if self.controller.busy:
            self.statusBar().showMessage("Folio is busy: wait for the current job or press Esc to stop it.", 4000)
            return
        self.prompt.clear()
        self._ask(question)

    def _ask(self, question: str) -> None:
        chat = self.chats[self.current_doc]
        self.active_card = chat.add_question(question)
        self.error_banner.hide()
        self.controller.ask(self.current_doc, question)

    def stop(self) -> None:
        if self.controller.busy:
            self.controller.cancel()
            self.progress_panel.cancel_button.setEnabled(False)
            self.statusBar().showMessage("Stopping…", 2000)

    def regenerate(self) -> None:
        chat = self.chats.get(self.current_doc or "")
        if chat is None or self.controller.busy or not chat.cards:
            return
        question = chat.remove_last()
        if question:
            self._ask(question)

    def copy_last(self) -> None:
        chat = self.chats.get(self.current_doc or "")
        if chat and chat.last_card:
            chat.last_card.copy()

    def new_chat(self) -> None:
        if self.current_doc is None or self.controller.busy:
            return
        self.chats[self.current_doc].clear_chat()
        self.controller.new_chat(self.current_doc)
        self.statusBar().showMessage("New chat: earlier questions are cleared.", 3000)

    def open_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self)
        if dialog.exec() and dialog.result_settings is not None:
            self.apply_settings(dialog.result_settings)

    def apply_settings(self, settings: AppSettings) -> None:
        """Save and apply `settings`: reload the model or mark caches for rebuild where needed."""
        impact = change_impact(self.settings, settings)
        self.settings = settings
        try:
            save_settings(settings, self.settings_path)
        except OSError as error:
            self.error_banner.show_message(f"The settings could not be saved ({error.strerror}). "
                                           "They apply until Folio closes.")
        if impact.reload_model:
            self.open_in_engine.clear()
            self.controller.load_model(settings)
        else:
            self.controller.apply_settings(settings)
        if impact.reload_model or impact.rebuild_caches:
            for entry in self.library.entries():
                self.library.update(entry.id, cached=False, cache_bytes=0)
            self.library_panel.refresh()

    def show_document(self, doc_id: str) -> None:
        entry = self.library.get(doc_id)
        if entry is None:
            return
        if doc_id not in self.chats:
            chat = ChatView(doc_id, entry.title)
            chat.regenerate_requested.connect(self.regenerate)
            chat.passage_clicked.connect(self._passage_clicked)
            self.chats[doc_id] = chat
            self.stack.addWidget(chat)
        self.current_doc = doc_id
        self.stack.setCurrentWidget(self.chats[doc_id])
        if doc_id not in self.open_in_engine and self.model_info is not None:
            self.open_in_engine.add(doc_id)
            self.controller.reopen(doc_id)  # a library document from an earlier run: load its cache
        self.doc_title.setText(f"<b>{entry.title}</b> — {entry.pages:,} page{'s' if entry.pages != 1 else ''}, "
                               f"{entry.tokens:,} tokens" + (" · cached" if entry.cached else ""))
        if self.model_info and self.model_info.max_positions:
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
        chat = self.chats.pop(doc_id, None)
        if chat is not None:
            self.stack.removeWidget(chat)
            chat.deleteLater()
        if self.current_doc == doc_id:
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
            self.runtime_banner.set_state(state if state in (OFFER, DOWNLOADING) else INFO, message)

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
            engine = args[0].engine
            self.progress_panel.start("Loading the model", f"{engine.model} on {engine.device}")
            self.welcome.model_line.setText(f"Loading the model ({engine.model})…")
        elif job == OPEN:
            self.opening[args[0]] = time.perf_counter()
            self.progress_panel.start(f"Opening {Path(args[0]).name}", "Checking that it fits…")
        elif job == REOPEN:
            entry = self.library.get(args[0])
            self.progress_panel.start(f"Opening {entry.title if entry else 'the document'}",
                                      "From the library: loading its saved cache…")
        elif job == ASK:
            self.progress_panel.hide()
        elif job == SETTINGS:
            self.statusBar().showMessage("Applying the new settings…", 2000)

    def _progress(self, stage: str, done: int, total: int, unit: str, eta_s: float) -> None:
        if self.controller.current == ASK and self.active_card is not None and self.active_card.text:
            return  # decoding has started: the streaming answer is the progress
        self.progress_panel.update_progress(stage, done, total, unit, eta_s)
        if self.controller.current == ASK:
            self.progress_panel.title.setText("<b>Preparing the answer</b>")
            self.progress_panel.set_detail(STAGE_NAMES.get(stage, stage))

    def _model_loaded(self, info: ModelInfo) -> None:
        self.model_info = info
        self.model_label.setText(f"Model: {info.name}")
        self.device_label.setText(f"{info.device} · {info.dtype}")
        self.welcome.model_line.setText(f"Model ready: {info.name} on {info.device}, context "
                                        f"{info.max_positions:,} tokens")
        self.statusBar().showMessage(f"Model loaded in {info.load_s:.1f} s", 4000)
        if self.current_doc:
            self.show_document(self.current_doc)

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

    def _token(self, doc_id: str, text: str) -> None:
        if self.active_card is not None:
            if not self.active_card.text:
                self.progress_panel.finish()
            self.active_card.append(text)

    def _finished(self, doc_id: str, answer: Answer) -> None:
        self.last_answer = answer
        if self.active_card is not None:
            self.active_card.finish(answer)
            self.active_card = None
        self.context_label.setText(f"{answer.context_used:,} of {answer.context_max:,} tokens")
        mode = f"{answer.attention} attention · " if answer.attention else ""
        self.speed_label.setText(f"{mode}first token {answer.ttft_s:.1f} s · {answer.decode_tokens_per_s:.1f} tokens/s")
        self.speed_label.setToolTip(answer.attention_reason)
        if self.library.update(doc_id, cached=True, last_used=time.time()):
            self.library_panel.refresh()

    def _failed(self, job: str, message: str) -> None:
        self.error_banner.show_message(message)
        if job == ASK and self.active_card is not None:
            self.active_card.finish(note="No answer: see the message above.")
            self.active_card = None
        if job == LOAD:
            self.model_label.setText("Model: not loaded")
            self.welcome.model_line.setText("The model did not load: see the message above, then fix it in "
                                            "Settings (Ctrl+,).")
        self.progress_panel.finish()

    def _cancelled(self, job: str) -> None:
        if job == ASK and self.active_card is not None:
            self.active_card.finish(note="Stopped.")
            self.active_card = None
        self.progress_panel.finish()
        self.statusBar().showMessage("Stopped." if job == ASK else "Cancelled.", 4000)
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
        chat = self.chats.get(self.current_doc or "")
        if chat and chat.last_card:
            chat.last_card.regenerate_button.setEnabled(not busy and chat.last_card.done)

    def _passage_clicked(self, passage: Passage) -> None:
        self.statusBar().showMessage(f"Passage on page {passage.page} ({passage.score:.0%} of the answer's "
                                     "attention on the document)", 6000)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.runtime is not None:
            if self.runtime.busy:
                self.hide()  # a download stops at its next chunk: do not look frozen meanwhile
            self.runtime.shutdown()
        self.controller.shutdown()
        super().closeEvent(event)
