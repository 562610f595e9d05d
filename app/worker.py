"""The engine thread: one EngineWorker QObject on a QThread owns the backend; the GUI talks to it by signals.

EngineController (GUI thread) queues jobs, one at a time, and cancels the running one through its
CancelToken (thread-safe: set from the GUI thread, checked by the engine between chunks and tokens).
EngineWorker (worker thread) runs each job on the EngineBackend and reports through typed signals.

The model picker's work (listing what fits, downloads that can take an hour, removal) runs on a second thread,
ModelController/ModelWorker, so questions about documents go on meanwhile.
"""

from __future__ import annotations

import logging
import traceback
from collections import deque
from collections.abc import Callable

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.backend import EngineBackend
from app.settings import AppSettings
from engine import CancelledError, CancelToken, FolioError, Progress

log = logging.getLogger("folio.app")

LOAD, OPEN, REOPEN, ASK, SETTINGS = "load", "open", "reopen", "ask", "settings"
RESET_LIBRARY = "reset_library"
REGENERATE, EDIT, CHAT = "regenerate", "edit", "chat"  # CHAT: list, open, rename, delete, select, export
ANSWER_JOBS = (ASK, REGENERATE, EDIT)  # jobs that stream an answer into a chat


def user_message(error: BaseException) -> str:
    """A readable one-paragraph message for any error (FolioError and ValueError are already readable)."""
    if isinstance(error, FolioError | ValueError):
        return str(error)
    if isinstance(error, MemoryError):
        return "Folio ran out of memory. Close other programs, or use a smaller model or a shorter document."
    name = type(error).__name__
    if "OutOfMemory" in name:
        return "The device ran out of memory. Use a smaller model, a shorter document, or the CPU device."
    return f"Something went wrong ({name}: {error}). Folio keeps working; details are in the log."


class EngineWorker(QObject):
    """Lives on the engine thread. Slots run jobs; signals report them. Never touched by widgets directly."""

    model_loading = Signal(str)  # the device the model is being loaded on, in words ("the CPU")
    model_loaded = Signal(object)  # ModelInfo
    progress = Signal(str, int, int, str, float)  # stage, done, total, unit, eta_s (-1: unknown)
    document_opened = Signal(object)  # OpenedDocument: its fit check passed, heavy work follows
    document_ready = Signal(object)  # PreparedDocument
    token = Signal(str, str)  # chat key, text
    finished = Signal(str, object)  # chat key, Answer
    chats_listed = Signal(str, list)  # document id, [ChatListing]
    chat_opened = Signal(object)  # ChatState: after opening, answering (however it ended), or a version change
    chat_exported = Signal(str)  # the Markdown file written
    failed = Signal(str, str)  # job, message
    cancelled = Signal(str)  # job
    memory = Signal(str)  # memory in use, e.g. "1.2 GB RAM"
    library_listed = Signal(list)  # [LibraryEntry] of the persistent library
    library_reset = Signal(str)  # a new library replaced a damaged one: what was done
    idle = Signal(str)  # the job ended, however it ended

    def __init__(self, backend: EngineBackend) -> None:
        super().__init__()
        self.backend = backend

    def _progress(self, event: Progress) -> None:
        self.progress.emit(event.stage, event.done, event.total, event.unit,
                           -1.0 if event.eta_s is None else float(event.eta_s))

    def _run(self, job: str, work: Callable[[], None]) -> None:
        try:
            work()
        except CancelledError:
            self.cancelled.emit(job)
        except Exception as error:  # every error becomes a message; the worker keeps running
            log.error("%s failed:\n%s", job, traceback.format_exc())
            self.failed.emit(job, user_message(error))
        finally:
            try:
                self.memory.emit(self.backend.memory_in_use())
            except Exception:
                log.exception("memory_in_use failed")
            self.idle.emit(job)

    def _list_library(self) -> None:
        try:
            self.library_listed.emit(self.backend.library_entries())
        except Exception as error:
            log.error("listing the library failed:\n%s", traceback.format_exc())
            self.failed.emit("library", user_message(error))

    @Slot(object, object)
    def load_model(self, settings: AppSettings, _cancel: CancelToken) -> None:
        def work() -> None:
            self.model_loading.emit(self.backend.describe_device(settings.engine.device))
            self.model_loaded.emit(self.backend.load_model(settings.engine, settings.library, self._progress))
            self._list_library()

        self._run(LOAD, work)

    @Slot(object, object)
    def apply_settings(self, settings: AppSettings, _cancel: CancelToken) -> None:
        def work() -> None:
            self.backend.apply_settings(settings.engine, settings.library)
            self._list_library()

        self._run(SETTINGS, work)

    @Slot(str, object)
    def open_document(self, path: str, cancel: CancelToken) -> None:
        def work() -> None:
            opened = self.backend.open_document(path, self._progress, cancel)
            if not opened.fit.fits:
                raise FolioErrorFromFit(" ".join(opened.fit.problems))
            self.document_opened.emit(opened)
            self.document_ready.emit(self.backend.prepare(opened.id, self._progress, cancel))
            self._list_library()

        self._run(OPEN, work)

    @Slot(str, object)
    def reopen(self, doc_id: str, cancel: CancelToken) -> None:
        """A library document not open in this run: load its stored cache (or prefill it)."""
        def work() -> None:
            self.document_ready.emit(self.backend.prepare(doc_id, self._progress, cancel))
            self._list_library()

        self._run(REOPEN, work)

    @Slot(str, str, str, object)
    def ask(self, doc_id: str, key: str, question: str, cancel: CancelToken) -> None:
        self._answer(ASK, doc_id, key, lambda on_token: self.backend.ask(doc_id, key, question, on_token,
                                                                         self._progress, cancel))

    @Slot(str, str, object)
    def regenerate(self, doc_id: str, key: str, cancel: CancelToken) -> None:
        self._answer(REGENERATE, doc_id, key, lambda on_token: self.backend.regenerate(doc_id, key, on_token,
                                                                                       self._progress, cancel))

    @Slot(str, str, int, str, object)
    def edit(self, doc_id: str, key: str, turn: int, question: str, cancel: CancelToken) -> None:
        self._answer(EDIT, doc_id, key, lambda on_token: self.backend.edit(doc_id, key, turn, question, on_token,
                                                                           self._progress, cancel))

    def _answer(self, job: str, doc_id: str, key: str, run: Callable) -> None:
        """Stream an answer into chat `key`; afterwards, however it ended, the chat's state (a stopped answer is
        kept) and the library (cache state and size: the answer may have rebuilt the cache; last use)."""
        def work() -> None:
            try:
                self.finished.emit(key, run(lambda text: self.token.emit(key, text)))
            finally:
                try:
                    self.chat_opened.emit(self.backend.open_chat(doc_id, key))
                    self.chats_listed.emit(doc_id, self.backend.chats(doc_id))
                except Exception:
                    log.exception("reading the chat after an answer failed")
                self._list_library()

        self._run(job, work)

    @Slot(str, object, object)
    def chat(self, doc_id: str, action: tuple, _cancel: CancelToken) -> None:
        """A quick chat job: ("list",), ("open", key or None), ("rename", key, title), ("delete", key),
        ("select", key, version) or ("export", key, path). Lists the document's chats afterwards."""
        def work() -> None:
            verb, *rest = action
            if verb == "open":
                self.chat_opened.emit(self.backend.open_chat(doc_id, rest[0]))
            elif verb == "rename":
                self.backend.rename_chat(doc_id, rest[0], rest[1])
            elif verb == "delete":
                self.backend.delete_chat(doc_id, rest[0])
            elif verb == "select":
                self.chat_opened.emit(self.backend.select_version(doc_id, rest[0], rest[1]))
            elif verb == "export":
                self.chat_exported.emit(self.backend.export_chat(doc_id, rest[0], rest[1]))
            self.chats_listed.emit(doc_id, self.backend.chats(doc_id))

        self._run(CHAT, work)

    @Slot(str)
    def forget(self, doc_id: str) -> None:
        def work() -> None:
            self.backend.forget(doc_id)
            self._list_library()

        self._run("forget", work)

    @Slot(object)
    def reset_library(self, _cancel: CancelToken) -> None:
        def work() -> None:
            self.library_reset.emit(self.backend.reset_library())
            self._list_library()

        self._run(RESET_LIBRARY, work)


class FolioErrorFromFit(FolioError):
    """The fit check said no (context, RAM or device memory)."""


class EngineController(QObject):
    """GUI-thread side: starts the thread, queues jobs one at a time, cancels the running one."""

    busy_changed = Signal(bool)
    job_started = Signal(str, tuple)  # job, its arguments
    _load = Signal(object, object)
    _apply = Signal(object, object)
    _open = Signal(str, object)
    _reopen = Signal(str, object)
    _ask = Signal(str, str, str, object)
    _regenerate = Signal(str, str, object)
    _edit = Signal(str, str, int, str, object)
    _chat = Signal(str, object, object)
    _forget = Signal(str)
    _reset_library = Signal(object)

    def __init__(self, backend: EngineBackend, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("folio-engine")
        self.worker = EngineWorker(backend)
        self.worker.moveToThread(self.thread)
        self._load.connect(self.worker.load_model)
        self._apply.connect(self.worker.apply_settings)
        self._open.connect(self.worker.open_document)
        self._reopen.connect(self.worker.reopen)
        self._ask.connect(self.worker.ask)
        self._regenerate.connect(self.worker.regenerate)
        self._edit.connect(self.worker.edit)
        self._chat.connect(self.worker.chat)
        self._forget.connect(self.worker.forget)
        self._reset_library.connect(self.worker.reset_library)
        self.worker.idle.connect(self._job_done)
        self._pending: deque[tuple[str, Signal, tuple]] = deque()
        self.current: str | None = None
        self._cancel: CancelToken | None = None
        self.thread.start()

    @property
    def busy(self) -> bool:
        return self.current is not None

    def load_model(self, settings: AppSettings) -> None:
        self._submit(LOAD, self._load, settings)

    def apply_settings(self, settings: AppSettings) -> None:
        self._submit(SETTINGS, self._apply, settings)

    def open_document(self, path: str) -> None:
        self._submit(OPEN, self._open, path)

    def reopen(self, doc_id: str) -> None:
        self._submit(REOPEN, self._reopen, doc_id)

    def ask(self, doc_id: str, key: str, question: str) -> None:
        self._submit(ASK, self._ask, doc_id, key, question)

    def regenerate(self, doc_id: str, key: str) -> None:
        self._submit(REGENERATE, self._regenerate, doc_id, key)

    def edit(self, doc_id: str, key: str, turn: int, question: str) -> None:
        self._submit(EDIT, self._edit, doc_id, key, turn, question)

    def chat(self, doc_id: str, *action) -> None:
        """A quick chat job (EngineWorker.chat), queued like the others so it never runs beside an answer."""
        self._submit(CHAT, self._chat, doc_id, tuple(action))

    def forget(self, doc_id: str) -> None:
        self._forget.emit(doc_id)

    def reset_library(self) -> None:
        """Start a new library in place of a damaged one (queued like any job)."""
        self._submit(RESET_LIBRARY, self._reset_library)

    def pending_jobs(self) -> list[str]:
        return [job for job, _, _ in self._pending]

    def cancel(self) -> None:
        """Stop the running job at its next chunk/token, and drop the queued ones."""
        self._pending.clear()
        if self._cancel is not None:
            self._cancel.cancel()

    def _submit(self, job: str, signal: Signal, *args) -> None:
        self._pending.append((job, signal, args))
        if self.current is None:
            self._next()

    def _next(self) -> None:
        if not self._pending:
            if self.current is not None:
                self.current = None
                self.busy_changed.emit(False)
            return
        job, signal, args = self._pending.popleft()
        was_busy = self.current is not None
        self.current = job
        self._cancel = CancelToken()
        self.job_started.emit(job, args)
        signal.emit(*args, self._cancel)
        if not was_busy:
            self.busy_changed.emit(True)

    @Slot(str)
    def _job_done(self, job: str) -> None:
        if job == self.current:
            self._next()

    def shutdown(self, wait_ms: int = 5000) -> bool:
        """Cancel what runs and stop the thread (at the next chunk/token); True when it stopped within `wait_ms`."""
        self.cancel()
        self.thread.quit()
        return self.thread.wait(wait_ms)


PULL, REMOVE, LIST_MODELS, TOKEN = "pull", "remove_model", "list_models", "hub_token"


class ModelWorker(QObject):
    """Lives on the model thread: the picker's listing, downloads and removals on the backend."""

    listed = Signal(str, list)  # machine in words, [ModelChoice]
    progress = Signal(str, object, object, str, float)  # as EngineWorker.progress (byte counts pass 2**31)
    pulled = Signal(str, str)  # spec, folder
    removed = Signal(str, object)  # spec, bytes freed (an int past 2**31)
    token_saved = Signal(bool)  # a token is stored now
    failed = Signal(str, str)  # job, message
    cancelled = Signal(str)  # job
    idle = Signal(str)

    def __init__(self, backend: EngineBackend) -> None:
        super().__init__()
        self.backend = backend

    def _run(self, job: str, work: Callable[[], None]) -> None:
        try:
            work()
        except CancelledError:
            self.cancelled.emit(job)
        except Exception as error:
            log.error("%s failed:\n%s", job, traceback.format_exc())
            self.failed.emit(job, user_message(error))
        finally:
            self.idle.emit(job)

    def _progress(self, event: Progress) -> None:
        self.progress.emit(event.stage, event.done, event.total, event.unit,
                           -1.0 if event.eta_s is None else float(event.eta_s))

    @Slot()
    def list_models(self) -> None:
        self._run(LIST_MODELS, lambda: self.listed.emit(*self.backend.model_choices()))

    @Slot(str, object)
    def pull(self, spec: str, cancel: CancelToken) -> None:
        self._run(PULL, lambda: self.pulled.emit(spec, self.backend.pull_model(spec, self._progress, cancel)))

    @Slot(str)
    def remove(self, spec: str) -> None:
        self._run(REMOVE, lambda: self.removed.emit(spec, self.backend.remove_model(spec)))

    @Slot(str)
    def save_token(self, token: str) -> None:
        def work() -> None:
            self.backend.save_hub_token(token)
            self.token_saved.emit(self.backend.has_hub_token())

        self._run(TOKEN, work)


class ModelController(QObject):
    """GUI-thread side of the model thread: one job at a time, the others queued (the picker disables its buttons
    while one runs)."""

    busy_changed = Signal(bool)
    _list = Signal()
    _pull = Signal(str, object)
    _remove = Signal(str)
    _token = Signal(str)

    def __init__(self, backend: EngineBackend, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("folio-models")
        self.worker = ModelWorker(backend)
        self.worker.moveToThread(self.thread)
        self._list.connect(self.worker.list_models)
        self._pull.connect(self.worker.pull)
        self._remove.connect(self.worker.remove)
        self._token.connect(self.worker.save_token)
        self.worker.idle.connect(self._done)
        self.current: str | None = None
        self.pulling: str | None = None  # the spec being downloaded
        self._cancel: CancelToken | None = None
        self._pending: deque[tuple[str, Signal, tuple]] = deque()

    @property
    def busy(self) -> bool:
        return self.current is not None

    def list_models(self) -> None:
        self._start(LIST_MODELS, self._list)

    def pull(self, spec: str) -> None:
        self._start(PULL, self._pull, spec)

    def remove(self, spec: str) -> None:
        self._start(REMOVE, self._remove, spec)

    def save_token(self, token: str) -> None:
        self._start(TOKEN, self._token, token)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    def _start(self, job: str, signal: Signal, *args) -> None:
        if job == LIST_MODELS and any(pending == LIST_MODELS for pending, _, _ in self._pending):
            return
        self._pending.append((job, signal, args))
        if self.current is None:
            self._next()

    def _next(self) -> None:
        if not self.thread.isRunning():  # started at the first job: a window that never opens the picker has none
            self.thread.start()
        job, signal, args = self._pending.popleft()
        self.current = job
        if job == PULL:
            self._cancel = CancelToken()
            self.pulling = args[0]
            args = (*args, self._cancel)
        self.busy_changed.emit(True)
        signal.emit(*args)

    @Slot(str)
    def _done(self, job: str) -> None:
        self.current = None
        if job == PULL:
            self.pulling, self._cancel = None, None
        if self._pending:
            self._next()
        else:
            self.busy_changed.emit(False)

    def shutdown(self, wait_ms: int = 5000) -> bool:
        """Cancel a download and stop the thread; True when it stopped within `wait_ms`."""
        self.cancel()
        self.thread.quit()
        return self.thread.wait(wait_ms)
