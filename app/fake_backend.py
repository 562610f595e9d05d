"""A fake EngineBackend for tests and demos: same events and timings shape as the engine, no model.

Documents are read with the engine's real reader (so bad files fail with the real messages); one "token"
is one word; answers are canned text streamed word by word; citations point at the paragraph sharing
the most words with the question, through the engine's real citation ranking.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field, replace

from app.backend import (
    Answer,
    CancelledError,
    CancelToken,
    ChatError,
    ChatListing,
    ChatState,
    Document,
    EngineConfig,
    LibraryConfig,
    LibraryEntry,
    Machine,
    ModelChoice,
    ModelError,
    ModelInfo,
    ModelShape,
    OpenedDocument,
    PreparedDocument,
    Progress,
    ProgressCallback,
    ProgressMeter,
    SpanMap,
    TokenCallback,
    TurnState,
    card,
    estimate_fit,
    find_entry,
    gated_error,
    model_choices,
    read_document,
    settings_cost,
    top_passages,
)

WORD = re.compile(r"\S+")
DEFAULT_ANSWER = ("According to the document, **the answer** is on the cited page. "
                  "It explains the point in detail:\n\n- first, the main fact;\n- second, its context.")


@dataclass
class FakeChat:
    key: str
    doc_id: str
    title: str = "New chat"
    turns: list[TurnState] = field(default_factory=list)
    updated_at: float = field(default_factory=time.time)
    model: str = "FakeLM-1B"


class FakeBackend:
    """step_s: sleep per prefill chunk / answer token; answer: the text streamed for every question."""

    def __init__(self, step_s: float = 0.01, answer: str = DEFAULT_ANSWER, context: int = 8192,
                 fail_load: str | None = None, machine: Machine | None = None, library_damaged: str = "") -> None:
        """machine: what the model picker sees (a 12 GB card by default); models "download" in 20 steps."""
        self.step_s, self.answer, self.context, self.fail_load = step_s, answer, context, fail_load
        self.machine = machine or card(12, ram_bytes=32 * 2**30)
        self.installed = {"smollm2-135m-instruct"}
        self.hub_token = ""
        self.pulls: list[str] = []
        self.library_damaged, self.library_resets = library_damaged, 0
        self.config = EngineConfig()
        self.library = LibraryConfig()
        self.documents: dict[str, Document] = {}
        self.spans: dict[str, SpanMap] = {}
        self.prepared: set[str] = set()  # documents whose cache is in memory under the current settings
        self.stored: dict[str, LibraryEntry] = {}  # the library: what was stored last, as the side panel lists it
        self.chat_store: dict[str, FakeChat] = {}  # every chat, as a library would keep them
        self.loaded = False

    def load_model(self, config: EngineConfig, library: LibraryConfig, progress: ProgressCallback) -> ModelInfo:
        self.config, self.library = config, library
        self.prepared.clear()  # the documents stay, as the engine's do (RealBackend.documents)
        meter = ProgressMeter("load", 4, progress, "parts")
        for done in range(5):
            time.sleep(self.step_s)
            meter.update(done)
        if self.fail_load:
            raise ModelError(self.fail_load, "Choose another model in Settings (Ctrl+,).")
        self.loaded = True
        entry = find_entry(config.model)
        name = "FakeLM-1B" if entry is None or entry.bundled else entry.name
        return ModelInfo(name, "cpu", "float32", self.context, 5 * self.step_s, config.weights, self.library_damaged,
                         "the CPU")

    def describe_device(self, spec: str) -> str:
        return "the GPU" if spec.startswith("cuda") else "the CPU"

    def apply_settings(self, config: EngineConfig, library: LibraryConfig) -> None:
        cost = settings_cost(self.config, config)
        if cost.heavy:  # the K/V or the index are built again at the next question
            self.prepared.clear()
        self.config, self.library = config, library

    def _cache_bytes(self, tokens: int) -> int:
        """The K/V (4 KiB a token in float16) and an index that grows with the static set: settings change the size."""
        per_token = 4096 if self.config.kv_dtype == "float16" else 8192
        return tokens * per_token + 64 * (self.config.n_sink + self.config.n_window)

    def _shape(self) -> ModelShape:
        return ModelShape(layers=16, kv_heads=4, query_heads=16, head_dim=64, max_positions=self.context)

    def open_document(self, path: str, progress: ProgressCallback, cancel: CancelToken) -> OpenedDocument:
        progress(Progress("extract", 0, 1, "file"))
        document = read_document(path)
        progress(Progress("extract", 1, 1, "file"))
        cancel.raise_if_cancelled()
        progress(Progress("tokenize", 0, 1, "document"))
        spans = [(m.start(), m.end()) for m in WORD.finditer(document.text)]
        progress(Progress("tokenize", 1, 1, "document"))
        doc_id = document.sha256
        config = self.config
        fit = estimate_fit(self._shape(), len(spans) + 40, config.max_new_tokens, config.attention, config.n_sink,
                           config.n_window, True, self.library.root, self.library.budget_bytes, available_ram=0)
        if fit.fits:
            self.documents[doc_id] = document
            self.spans[doc_id] = SpanMap(20, spans)
        return OpenedDocument(doc_id, document.title, document.pages, len(spans) + 40, str(path), fit,
                              cached=doc_id in self.prepared, warnings=document.warnings)

    def prepare(self, doc_id: str, progress: ProgressCallback, cancel: CancelToken) -> PreparedDocument:
        started = time.perf_counter()
        tokens = len(self.spans[doc_id]) + 40
        if doc_id in self.prepared:
            return PreparedDocument(doc_id, self.stored[doc_id].cache_bytes, time.perf_counter() - started, True)
        for stage, total, unit in (("prefill", tokens, "tokens"), ("index", 16, "layers"), ("saving", 4, "files")):
            meter = ProgressMeter(stage, total, progress, unit)
            steps = 10
            meter.update(0)
            for step in range(1, steps + 1):
                cancel.raise_if_cancelled()
                time.sleep(self.step_s)
                meter.update(total * step // steps)
        self.prepared.add(doc_id)
        document = self.documents[doc_id]
        self.stored[doc_id] = LibraryEntry(doc_id, document.title, document.pages, tokens, True,
                                           self._cache_bytes(tokens), time.time(), str(document.source))
        return PreparedDocument(doc_id, self.stored[doc_id].cache_bytes, time.perf_counter() - started, False)

    def ask(self, doc_id: str, key: str, question: str, on_token: TokenCallback, progress: ProgressCallback,
            cancel: CancelToken) -> Answer:
        chat = self._chat(key)
        return self._answer(chat, len(chat.turns), question, on_token, progress, cancel, new_version=False)

    def regenerate(self, doc_id: str, key: str, on_token: TokenCallback, progress: ProgressCallback,
                   cancel: CancelToken) -> Answer:
        chat = self._chat(key)
        if not chat.turns:
            raise ChatError("This chat has no answer to regenerate yet.", "Ask a question first.")
        return self._answer(chat, len(chat.turns) - 1, chat.turns[-1].question, on_token, progress, cancel,
                            new_version=True)

    def edit(self, doc_id: str, key: str, turn: int, question: str, on_token: TokenCallback,
             progress: ProgressCallback, cancel: CancelToken) -> Answer:
        return self._answer(self._chat(key), turn, question, on_token, progress, cancel, new_version=False)

    def _answer(self, chat: FakeChat, position: int, question: str, on_token: TokenCallback,
                progress: ProgressCallback, cancel: CancelToken, new_version: bool) -> Answer:
        doc_id = chat.doc_id
        if chat.model != "FakeLM-1B":
            raise ChatError(self._problem(chat), "Start a new chat on this document.")
        if doc_id not in self.prepared:
            self.prepare(doc_id, progress, cancel)
        started = time.perf_counter()
        words = len(question.split())  # the question is read like the engine reads it after a cached document
        meter = ProgressMeter("question", words, progress, "tokens")
        for done in range(words + 1):
            cancel.raise_if_cancelled()
            meter.update(done)
        pieces = re.findall(r"\S+\s*", self.answer)
        first = None
        said = ""
        history = self._tokens(chat, position)
        try:
            for piece in pieces:
                cancel.raise_if_cancelled()
                time.sleep(self.step_s)
                first = first or time.perf_counter()
                on_token(piece)
                said += piece
        except CancelledError:
            if said:
                self._keep(chat, position, question, new_version, Answer(
                    said, history + len(question.split()), len(said.split()), self.context, 0.0, 0.0, "cancelled"))
            raise
        decode_s = max(time.perf_counter() - (first or started), 1e-6)
        document, spans = self.documents[doc_id], self.spans[doc_id]
        steps = self._attention_steps(document.text, spans, question, len(pieces))
        citations = top_passages(steps, spans, document.text, document.page_of, top_n=3)
        answer = Answer(self.answer, history + len(question.split()), len(pieces), self.context,
                        (first or started) - started, len(pieces) / decode_s, "stop_token", tuple(citations))
        self._keep(chat, position, question, new_version, answer)
        return answer

    def _keep(self, chat: FakeChat, position: int, question: str, new_version: bool, answer: Answer) -> None:
        if new_version:
            turn = chat.turns[position]
            turn = TurnState(turn.question, (*turn.answers, answer), len(turn.answers))
        else:
            turn = TurnState(question, (answer,), 0)
        del chat.turns[position:]
        chat.turns.append(turn)
        if chat.title == "New chat":
            chat.title = " ".join(question.split())[:60]
        chat.updated_at = time.time()

    def _tokens(self, chat: FakeChat, turns: int) -> int:
        """One token per word: the document, then each turn's question and answer."""
        return len(self.spans.get(chat.doc_id, ())) + 40 + sum(
            len(t.question.split()) + t.answer.new_tokens for t in chat.turns[:turns])

    def _chat(self, key: str) -> FakeChat:
        if key not in self.chat_store:
            raise ChatError("This chat is no longer in the library.", "Start a new chat on this document.")
        return self.chat_store[key]

    @staticmethod
    def _problem(chat: FakeChat) -> str:
        if chat.model == "FakeLM-1B":
            return ""
        return (f"This chat was made with the model {chat.model}, and the current model is FakeLM-1B. Its answers "
                "stay readable, but it cannot be continued on another model.")

    def chats(self, doc_id: str) -> list[ChatListing]:
        chats = [c for c in self.chat_store.values() if c.doc_id == doc_id]
        return [ChatListing(c.key, c.title, len(c.turns), c.updated_at, stored=bool(c.turns))
                for c in sorted(chats, key=lambda c: c.updated_at, reverse=True)]

    def open_chat(self, doc_id: str, key: str | None) -> ChatState:
        if key is None:
            for old in [c.key for c in self.chat_store.values() if c.doc_id == doc_id and not c.turns]:
                del self.chat_store[old]
            chat = FakeChat(uuid.uuid4().hex, doc_id)
            self.chat_store[chat.key] = chat
        else:
            chat = self._chat(key)
        return ChatState(chat.key, doc_id, chat.title, tuple(chat.turns), self._tokens(chat, len(chat.turns)),
                         self.context, self._problem(chat), bool(chat.turns))

    def select_version(self, doc_id: str, key: str, version: int) -> ChatState:
        chat = self._chat(key)
        chat.turns[-1] = replace(chat.turns[-1], selected=version)
        return self.open_chat(doc_id, key)

    def rename_chat(self, doc_id: str, key: str, title: str) -> None:
        self._chat(key).title = " ".join(title.split()) or self._chat(key).title

    def delete_chat(self, doc_id: str, key: str) -> None:
        self.chat_store.pop(key, None)

    def export_chat(self, doc_id: str, key: str, path: str) -> str:
        chat = self._chat(key)
        lines = [f"# {chat.title}", ""]
        for number, turn in enumerate(chat.turns, start=1):
            lines += [f"## Question {number}", "", f"> {turn.question}", "", turn.answer.text, ""]
            lines += [f"- page {p.page}: {p.text[:60]}" for p in turn.answer.citations]
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    @staticmethod
    def _attention_steps(text: str, spans: SpanMap, question: str, n_steps: int) -> list[list[tuple[int, float]]]:
        """Each answer token attends to document words that also appear in the question."""
        wanted = {w.lower().strip("?.,!") for w in question.split() if len(w) > 3}
        hits = [spans.first_position + i for i, (s, e) in enumerate(spans.spans)
                if text[s:e].lower().strip("?.,!*") in wanted]
        hits = hits or [spans.first_position]
        return [[(p, 1.0) for p in hits] for _ in range(max(1, n_steps))]

    def forget(self, doc_id: str) -> None:
        self.documents.pop(doc_id, None)
        self.prepared.discard(doc_id)
        self.stored.pop(doc_id, None)
        for key in [c.key for c in self.chat_store.values() if c.doc_id == doc_id]:
            del self.chat_store[key]

    def reset_library(self) -> str:
        self.library_damaged, self.library_resets = "", self.library_resets + 1
        return f"Started a new library in {self.library.root}."

    def library_entries(self) -> list[LibraryEntry]:
        return sorted(self.stored.values(), key=lambda e: e.last_used, reverse=True)

    def memory_in_use(self) -> str:
        return "1.2 GiB RAM"

    # -- the model picker ------------------------------------------------------------------------------
    def model_choices(self) -> tuple[str, list[ModelChoice]]:
        choices = model_choices(self.machine, installed=lambda entry: entry.id in self.installed,
                                quantization_available=True)
        return self.machine.name, choices

    def pull_model(self, spec: str, progress: ProgressCallback, cancel: CancelToken) -> str:
        entry = find_entry(spec)
        if entry is None:
            raise ModelError(f"The hub has no model {spec!r}, or it is private.", "Check the spelling.")
        if entry.gated and not self.hub_token:
            raise gated_error(entry.hub_id)
        self.pulls.append(entry.id)
        meter = ProgressMeter("download", entry.download_bytes, progress, "bytes")
        for step in range(21):
            cancel.raise_if_cancelled()
            meter.update(entry.download_bytes * step // 20)
            time.sleep(self.step_s)
        self.installed.add(entry.id)
        return f"/fake/hub/{entry.hub_id}"

    def remove_model(self, spec: str) -> int:
        entry = find_entry(spec)
        if entry is None or entry.id not in self.installed:
            return 0
        self.installed.discard(entry.id)
        return entry.download_bytes

    def save_hub_token(self, token: str) -> None:
        self.hub_token = token.strip()

    def has_hub_token(self) -> bool:
        return bool(self.hub_token)
