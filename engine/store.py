"""The document library on disk: metadata in SQLite (WAL, via sqlite-utils), arrays in per-cache folders.

Layout under the data folder (FOLIO_DATA_DIR, else platformdirs' user data dir for "folio"):

    folio.db                                  documents, caches, indexes, files, settings, migrations, chats,
                                              citation baselines
    caches/<cache_id>/prefix_ids.npy          the prompt prefix the K/V belong to
    caches/<cache_id>/layer_NNN_{keys,values,queries}.npy
    caches/<cache_id>/index/<index_id>/layer_NNN_<name>.npy

Crash safety: a cache (or index) row is inserted with status 'writing' (and the writer's pid) before
its folder is made, its files are written to temporary names, fsynced and renamed, and the row turns
'ready' in the last transaction. Deleting goes the other way (row first, then files). So a folder
without a row, or a 'writing' row whose writer is dead, is debris of a crash: `sweep()` removes it.
Document text and per-token source spans are small and live in SQLite itself.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs
import sqlite_utils

from engine.arrays import FileRecord
from engine.errors import LibraryDamagedError, StoreError
from engine.ingest import Document
from engine.units import format_bytes

DATA_ENV = "FOLIO_DATA_DIR"
DEFAULT_BUDGET_BYTES = 50 * 2**30
STALE_WRITER_S = 24 * 3600  # a 'writing' row this old is debris even if its pid was reused
BUSY_TIMEOUT_S = 30.0
LOW_SPACE_BYTES = 2**20  # with less free, an I/O error opening or writing the library is the disk being full
DAMAGED_FOLDER = "damaged"  # copies of damaged library files (folio-<time>-<sha256 prefix>.db)
_WRITING: set[str] = set()  # ids of the entries this process is writing now (its other 'writing' rows are debris)

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "documents, caches, indexes, files, spans, settings", """
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,          -- of the source file's bytes
    title TEXT NOT NULL,
    source_path TEXT,
    pages INTEGER NOT NULL,
    characters INTEGER NOT NULL,
    tokens INTEGER,                       -- document tokens for the tokenizer last used
    added_at REAL NOT NULL,
    last_used_at REAL NOT NULL
);
CREATE TABLE document_texts (
    document_id INTEGER PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    page_starts TEXT NOT NULL             -- JSON list of character offsets
);
CREATE TABLE token_spans (
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    tokenizer_fingerprint TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    spans BLOB NOT NULL,                  -- int32 [tokens, 3]: page, char_start, char_end
    PRIMARY KEY (document_id, tokenizer_fingerprint)
);
CREATE TABLE caches (
    id TEXT PRIMARY KEY,                  -- sha256 of the identity below
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    model_name TEXT,
    model_fingerprint TEXT NOT NULL,
    tokenizer_fingerprint TEXT NOT NULL,
    template_sha256 TEXT NOT NULL,
    compute_dtype TEXT NOT NULL,
    kv_dtype TEXT NOT NULL,
    layout_version INTEGER NOT NULL,
    prefix_sha256 TEXT NOT NULL,
    prefix_tokens INTEGER NOT NULL,
    max_train_queries INTEGER NOT NULL,
    n_layers INTEGER NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,                 -- 'writing' or 'ready'
    writer_pid INTEGER,
    writer_host TEXT,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL
);
CREATE INDEX caches_document ON caches(document_id);
CREATE TABLE indexes (
    id TEXT PRIMARY KEY,                  -- sha256 of cache id + method + n_sink + n_window + build params
    cache_id TEXT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    method TEXT NOT NULL,
    n_sink INTEGER NOT NULL,
    n_window INTEGER NOT NULL,
    params TEXT NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    writer_pid INTEGER,
    writer_host TEXT,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL
);
CREATE INDEX indexes_cache ON indexes(cache_id);
CREATE TABLE files (
    owner TEXT NOT NULL,                  -- a cache id or an index id
    name TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,                  -- JSON list
    PRIMARY KEY (owner, name)
);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""),
    # Chats (engine/chat_store.py): a turn's rows are written in one transaction after its answer, so a process
    # killed mid-answer leaves the chat as it was before that turn. Deleting a document deletes its chats.
    (2, "chats, turns, answer versions, sources", """
CREATE TABLE chats (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,             -- stable id given before the chat is first stored
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    tokenizer_fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX chats_document ON chats(document_id);
CREATE TABLE chat_turns (
    chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,            -- 0, 1, ... in the chat
    question TEXT NOT NULL,
    selected_version INTEGER NOT NULL,    -- the answer version the chat continues from
    PRIMARY KEY (chat_id, position)
);
CREATE TABLE chat_answers (
    chat_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    version INTEGER NOT NULL,             -- 0, 1, ...: regenerated answers keep the earlier ones
    text TEXT NOT NULL,
    token_ids BLOB NOT NULL,              -- int32 [n]: the answer as the model made it
    stop_reason TEXT NOT NULL,            -- stop_token, max_new_tokens, context_full or cancelled
    prompt_tokens INTEGER NOT NULL,
    reused_tokens INTEGER NOT NULL,
    new_tokens INTEGER NOT NULL,
    prefill_s REAL NOT NULL,
    ttft_s REAL NOT NULL,
    decode_s REAL NOT NULL,
    settings TEXT NOT NULL,               -- JSON: the EngineConfig it was made with
    created_at REAL NOT NULL,
    PRIMARY KEY (chat_id, position, version),
    FOREIGN KEY (chat_id, position) REFERENCES chat_turns(chat_id, position) ON DELETE CASCADE
);
CREATE TABLE chat_sources (
    chat_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    version INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    page INTEGER NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    share REAL NOT NULL,
    PRIMARY KEY (chat_id, position, version, rank),
    FOREIGN KEY (chat_id, position, version) REFERENCES chat_answers(chat_id, position, version) ON DELETE CASCADE
);
"""),
    # Citation baselines (engine/citation_baseline.py): where a question-agnostic answer about the document looks,
    # computed once per cache and attention setting. They go with their cache.
    (3, "citation baselines", """
CREATE TABLE citation_baselines (
    cache_id TEXT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    key TEXT NOT NULL,                    -- sha256 of what made it: attention mode and settings, question, tokens
    positions BLOB NOT NULL,              -- int32 [n]: prompt positions
    mass BLOB NOT NULL,                   -- float32 [n]: their attention mass over the neutral answer
    created_at REAL NOT NULL,
    PRIMARY KEY (cache_id, key)
);
"""),
    # A file's identity when its sha256 was last checked (engine/arrays.py): a reopen hashes only what changed since.
    (4, "file identities", """
ALTER TABLE files ADD COLUMN identity TEXT;  -- device:inode:size:mtime_ns:ctime_ns; NULL: hash at the next open
"""),
]


def data_dir() -> Path:
    """Where the library lives: $FOLIO_DATA_DIR, else the platform's user data folder for Folio."""
    return Path(os.environ.get(DATA_ENV) or platformdirs.user_data_dir("folio", appauthor=False))


@dataclass(frozen=True)
class LibraryConfig:
    """Where the library lives (by default data_dir()) and how much disk its caches may take: beyond the budget the
    least recently used caches are evicted."""

    folder: str = field(default_factory=lambda: str(data_dir()))
    budget_bytes: int = DEFAULT_BUDGET_BYTES

    def __post_init__(self) -> None:
        problems = []
        if not self.folder.strip():
            problems.append("data folder must be set")
        if self.budget_bytes <= 0:
            problems.append("disk budget must be more than 0 bytes")
        if problems:
            raise ValueError("Invalid settings: " + "; ".join(problems) + ".")

    @property
    def root(self) -> Path:
        return Path(self.folder).expanduser()


@dataclass(frozen=True)
class DocumentInfo:
    """One library entry as listed: cache_bytes counts its ready caches and indexes (0: not cached)."""

    id: int
    title: str
    source_path: str | None
    pages: int
    characters: int
    tokens: int | None
    added_at: float
    last_used_at: float
    cache_bytes: int
    sha256: str  # of the source file's bytes (Document.sha256)

    @property
    def cached(self) -> bool:
        return self.cache_bytes > 0


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (never signals it)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """The library: documents, their KV caches and indexes. One instance per process is enough; several
    processes may use the same folder at once (SQLite WAL + busy timeout; writers claim rows first)."""

    def __init__(self, root: Path | str | None = None, sweep: bool = True) -> None:
        self.root = Path(root) if root is not None else data_dir()
        self.notices: list[str] = []  # what sweep() cleaned up, what could not be written, for the user
        self.read_only_reason = ""  # set when a bookkeeping write failed because the disk is full
        try:
            (self.root / "caches").mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.root / "folio.db", timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            with self.db.ensure_autocommit_on():
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:  # a plain DatabaseError: what _damaged() recognises besides SQLite's codes
                raise sqlite3.DatabaseError("; ".join(problems))
            self._migrate()
        except (OSError, sqlite3.Error) as error:
            if getattr(self, "db", None) is not None:
                self.db.close()
            raise self._open_error(error) from error
        self.host = socket.gethostname()
        if sweep:
            self.sweep()

    def _open_error(self, error: OSError | sqlite3.Error) -> StoreError:
        """Why the library cannot be opened, for people: a full disk, a damaged file (copied aside), or else."""
        if _disk_full(error, self.root):
            free = _free_bytes(self.root)
            return StoreError(f"The disk is full ({format_bytes(free or 0)} free in {self.root}), so the document "
                              "library cannot be opened: answers work, but nothing is cached.",
                              f"Free some disk space, or set {DATA_ENV} to a folder on another disk.")
        if _damaged(error):
            return library_damaged_error(self.root, str(error))
        return StoreError(f"The document library in {self.root} cannot be opened ({error}).",
                          f"Check that the folder is writable, or set {DATA_ENV} to another folder.")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transactions and schema ------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction (BEGIN IMMEDIATE: waits for other writers instead of failing later).
        Nested calls join the outer transaction. A failure of SQLite's (a full disk, a damaged file) is rolled back
        and raised as a StoreError that says so."""
        conn = self.db.conn
        if conn.in_transaction:
            yield self.db
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self._commit()
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise self._write_error(error) from error

    def _commit(self) -> None:
        self.db.conn.execute("COMMIT")

    def _write_error(self, error: sqlite3.Error) -> StoreError:
        if _disk_full(error, self.root):
            return disk_full_error(None, _free_bytes(self.root), "recording it in the library")
        if _damaged(error):
            return library_damaged_error(self.root, str(error))
        if isinstance(error, sqlite3.IntegrityError) and "FOREIGN KEY" in str(error):
            return StoreError("What this belongs to was removed from the library meanwhile (by another Folio "
                              "window or command), so it was not saved.", "Open the document again to add it back.")
        return StoreError(f"The document library in {self.root} could not be written ({error}).",
                          "Check that the data folder is writable.")

    def _bookkeeping(self, write) -> None:
        """Run a write the library can do without (last-use times, debris removal): on a full disk it is skipped
        with a notice, so the library keeps working read-only."""
        try:
            write()
        except StoreError as error:
            if not error.disk_full:
                raise
            if not self.read_only_reason:
                self.read_only_reason = error.problem
                self.notices.append(f"library is read-only until there is space: {error.problem}")

    def _migrate(self) -> None:
        """Apply the migrations the library lacks. Checked with a read first, so an up-to-date library opens without
        writing (as it must on a full disk)."""
        if not self._missing_migrations():
            return
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS migrations "
                       "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
            for version, name, script in self._missing_migrations():
                for statement in filter(str.strip, _strip_comments(script).split(";")):
                    db.execute(statement)
                db["migrations"].insert({"version": version, "name": name, "applied_at": time.time()})

    def _missing_migrations(self) -> list[tuple[int, str, str]]:
        if not self.db["migrations"].exists():
            return list(MIGRATIONS)
        done = {row[0] for row in self.db.execute("SELECT version FROM migrations").fetchall()}
        return [migration for migration in MIGRATIONS if migration[0] not in done]

    def schema_version(self) -> int:
        return self.db.execute("SELECT max(version) FROM migrations").fetchone()[0] or 0

    # -- settings ---------------------------------------------------------------------------------------
    @property
    def budget_bytes(self) -> int:
        row = self.db.execute("SELECT value FROM settings WHERE key = 'budget_bytes'").fetchone()
        return int(row[0]) if row else DEFAULT_BUDGET_BYTES

    def set_budget(self, n_bytes: int) -> None:
        with self.transaction() as db:
            db["settings"].upsert({"key": "budget_bytes", "value": str(int(n_bytes))}, pk="key")

    # -- documents --------------------------------------------------------------------------------------
    def add_document(self, document: Document, tokens: int | None = None) -> int:
        """Insert (or refresh) `document`, keyed by the sha256 of its file; returns its id. Refreshing a document the
        library has is bookkeeping: on a full disk the library keeps the old row."""
        existing = self.find_document(document.sha256)
        if existing is not None and not self.read_only_reason:
            self._bookkeeping(lambda: self._add_document(document, tokens))
            return existing
        if existing is not None:
            return existing
        return self._add_document(document, tokens)

    def _add_document(self, document: Document, tokens: int | None) -> int:
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT id FROM documents WHERE sha256 = ?", [document.sha256]).fetchone()
            fields = {"title": document.title, "source_path": str(document.source) if document.source else None,
                      "pages": document.pages, "characters": len(document.text), "last_used_at": now}
            if tokens is not None:
                fields["tokens"] = tokens
            if row:
                db["documents"].update(row[0], fields)
                return int(row[0])
            doc_id = db["documents"].insert({"sha256": document.sha256, "added_at": now, **fields}).last_pk
            db["document_texts"].insert({"document_id": doc_id, "text": document.text,
                                         "page_starts": json.dumps(list(document.page_starts))})
            return int(doc_id)

    def find_document(self, sha256: str) -> int | None:
        row = self.db.execute("SELECT id FROM documents WHERE sha256 = ?", [sha256]).fetchone()
        return int(row[0]) if row else None

    def get_document(self, doc_id: int) -> DocumentInfo | None:
        found = [d for d in self.list_documents() if d.id == doc_id]
        return found[0] if found else None

    def load_document(self, doc_id: int) -> Document:
        """The stored Document (text and pages), without needing its source file."""
        row = self.db.execute(
            "SELECT d.title, d.source_path, d.sha256, t.text, t.page_starts FROM documents d "
            "JOIN document_texts t ON t.document_id = d.id WHERE d.id = ?", [doc_id]).fetchone()
        if row is None:
            raise StoreError(f"The library has no document {doc_id}.", "List them with `library list`.")
        title, source, sha, text, page_starts = row
        return Document(text, title, Path(source) if source else None, sha, tuple(json.loads(page_starts)))

    def list_documents(self) -> list[DocumentInfo]:
        """All documents, most recently used first, with the bytes of their ready caches and indexes."""
        rows = self.db.execute("""
            SELECT d.id, d.title, d.source_path, d.pages, d.characters, d.tokens, d.added_at, d.last_used_at,
                   COALESCE((SELECT sum(c.bytes) + COALESCE((SELECT sum(i.bytes) FROM indexes i
                             JOIN caches c2 ON i.cache_id = c2.id
                             WHERE c2.document_id = d.id AND i.status = 'ready'), 0)
                             FROM caches c WHERE c.document_id = d.id AND c.status = 'ready'), 0),
                   d.sha256
            FROM documents d ORDER BY d.last_used_at DESC, d.id DESC""").fetchall()
        return [DocumentInfo(*row) for row in rows]

    def touch_document(self, doc_id: int) -> None:
        def write() -> None:
            with self.transaction() as db:
                db.execute("UPDATE documents SET last_used_at = ? WHERE id = ?", [time.time(), doc_id])

        self._bookkeeping(write)

    def delete_document(self, doc_id: int) -> bool:
        """Remove a document, its text, spans, caches, indexes and their files. False if it did not exist."""
        caches = [row[0] for row in self.db.execute("SELECT id FROM caches WHERE document_id = ?", [doc_id])]
        with self.transaction() as db:
            for cache_id in caches:
                self._delete_cache_rows(cache_id)
            db.execute("DELETE FROM token_spans WHERE document_id = ?", [doc_id])
            db.execute("DELETE FROM document_texts WHERE document_id = ?", [doc_id])
            gone = db.execute("DELETE FROM documents WHERE id = ?", [doc_id]).rowcount
        for cache_id in caches:
            self._remove_folder(self.cache_dir(cache_id))
        return bool(gone)

    def document_exists(self, doc_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM documents WHERE id = ?", [doc_id]).fetchone() is not None

    def save_token_spans(self, doc_id: int, tokenizer_fingerprint: str, spans: np.ndarray) -> None:
        """spans [N, 3] int32 (page, char_start, char_end) of the document's tokens for one tokenizer."""
        spans = np.ascontiguousarray(spans, dtype=np.int32).reshape(-1, 3)
        with self.transaction() as db:
            db["token_spans"].upsert({"document_id": doc_id, "tokenizer_fingerprint": tokenizer_fingerprint,
                                      "tokens": len(spans), "spans": spans.tobytes()},
                                     pk=("document_id", "tokenizer_fingerprint"))

    def token_spans(self, doc_id: int, tokenizer_fingerprint: str) -> np.ndarray | None:
        row = self.db.execute("SELECT tokens, spans FROM token_spans WHERE document_id = ? AND "
                              "tokenizer_fingerprint = ?", [doc_id, tokenizer_fingerprint]).fetchone()
        return None if row is None else np.frombuffer(row[1], dtype=np.int32).reshape(row[0], 3)

    def save_citation_baseline(self, cache_id: str, key: str, positions: np.ndarray, mass: np.ndarray) -> None:
        """Keep a cache's citation baseline (positions [n] and their mass [n]) under `key`. Raises StoreError (the
        cache was removed meanwhile, a full disk)."""
        with self.transaction() as db:
            db["citation_baselines"].upsert({
                "cache_id": cache_id, "key": key, "created_at": time.time(),
                "positions": np.ascontiguousarray(positions, dtype=np.int32).tobytes(),
                "mass": np.ascontiguousarray(mass, dtype=np.float32).tobytes()}, pk=("cache_id", "key"))

    def citation_baseline(self, cache_id: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(positions [n] int32, mass [n] float32) kept for the cache under `key`, or None."""
        row = self.db.execute("SELECT positions, mass FROM citation_baselines WHERE cache_id = ? AND key = ?",
                              [cache_id, key]).fetchone()
        if row is None:
            return None
        positions, mass = np.frombuffer(row[0], dtype=np.int32), np.frombuffer(row[1], dtype=np.float32)
        return (positions, mass) if len(positions) == len(mass) else None

    # -- caches and indexes (both "entries": a row, a folder, files) ----------------------------------------
    def cache_dir(self, cache_id: str) -> Path:
        return self.root / "caches" / cache_id

    def index_dir(self, cache_id: str, index_id: str) -> Path:
        return self.cache_dir(cache_id) / "index" / index_id

    def get_cache(self, cache_id: str) -> dict | None:
        return _one(self.db, "SELECT * FROM caches WHERE id = ?", [cache_id])

    def caches_of(self, doc_id: int) -> list[dict]:
        """The document's cache rows, most recently used first."""
        return list(self.db.query("SELECT * FROM caches WHERE document_id = ? ORDER BY last_used_at DESC",
                                  [doc_id]))

    def get_index(self, index_id: str) -> dict | None:
        return _one(self.db, "SELECT * FROM indexes WHERE id = ?", [index_id])

    def files(self, owner: str) -> list[FileRecord]:
        return [FileRecord.from_row(row) for row in
                self.db.query("SELECT * FROM files WHERE owner = ? ORDER BY name", [owner])]

    def remember_identities(self, owner: str, records: list[FileRecord]) -> None:
        """Store the identities the files were just hashed at, so that the next open does not hash them again. A
        library that cannot be written now (a full disk) only costs the same hashes at the next open."""
        if not records:
            return
        try:
            with self.transaction() as db:
                db.conn.executemany("UPDATE files SET identity = ? WHERE owner = ? AND name = ?",
                                    [(r.identity, owner, r.name) for r in records])
        except StoreError:
            pass

    def claim(self, table: str, row: dict) -> str:
        """Insert a 'writing' row for an entry about to be written. Returns "claimed", or "ready" /
        "busy" when the entry already exists or another live process is writing it. A row left by a
        dead writer is taken over (its files are removed first)."""
        with self.transaction() as db:
            existing = _one(db, f"SELECT * FROM {table} WHERE id = ?", [row["id"]])
            if existing and existing["status"] == "ready":
                return "ready"
            if existing and not self._writer_dead(existing):
                return "busy"
            if existing:
                self._delete_entry_rows(table, row["id"])
            now = time.time()
            db[table].insert({**row, "status": "writing", "writer_pid": os.getpid(), "writer_host": self.host,
                              "created_at": now, "last_used_at": now, "bytes": 0})
        _WRITING.add(row["id"])
        return "claimed"

    def commit_entry(self, table: str, entry_id: str, records: list[FileRecord]) -> None:
        """The last step of a write: file records in, row 'ready' (the cache becomes visible). Raises StoreError
        when the row is gone (its document was removed meanwhile)."""
        _WRITING.discard(entry_id)
        with self.transaction() as db:
            updated = db.execute(f"UPDATE {table} SET status = 'ready', bytes = ?, last_used_at = ? WHERE id = ?",
                                 [sum(r.bytes for r in records), time.time(), entry_id]).rowcount
            if not updated:
                raise StoreError("What was being saved was removed from the library meanwhile (by another Folio "
                                 "window or command), so it was not saved.", "Open the document again to add it back.")
            db["files"].insert_all([r.to_row(entry_id) for r in records], replace=True)

    def abort_entry(self, table: str, entry_id: str, folder: Path) -> bool:
        """Forget an entry whose write failed or whose writer died: its files first (a 'writing' row is never read,
        and on a full disk removing them makes room for SQLite), then its rows. Never raises: a row that cannot be
        deleted now (the disk is still full) stays 'writing' for a later sweep. Returns whether the rows went."""
        _WRITING.discard(entry_id)
        self._remove_folder(folder)
        try:
            with self.transaction():
                self._delete_entry_rows(table, entry_id)
        except StoreError:
            return False
        return True

    def touch(self, table: str, entry_id: str) -> None:
        def write() -> None:
            with self.transaction() as db:
                db.execute(f"UPDATE {table} SET last_used_at = ? WHERE id = ?", [time.time(), entry_id])

        self._bookkeeping(write)

    def delete_cache(self, cache_id: str) -> None:
        """Remove a cache, its indexes and their files (the document stays, "not cached")."""
        with self.transaction():
            self._delete_cache_rows(cache_id)
        self._remove_folder(self.cache_dir(cache_id))

    def delete_index(self, cache_id: str, index_id: str) -> None:
        """Remove a ready index (row first, then files)."""
        with self.transaction():
            self._delete_entry_rows("indexes", index_id)
        self._remove_folder(self.index_dir(cache_id, index_id))

    def _delete_cache_rows(self, cache_id: str) -> None:
        for (index_id,) in self.db.execute("SELECT id FROM indexes WHERE cache_id = ?", [cache_id]).fetchall():
            self._delete_entry_rows("indexes", index_id)
        self._delete_entry_rows("caches", cache_id)

    def _delete_entry_rows(self, table: str, entry_id: str) -> None:
        self.db.execute("DELETE FROM files WHERE owner = ?", [entry_id])
        self.db.execute(f"DELETE FROM {table} WHERE id = ?", [entry_id])

    def _writer_dead(self, row: dict) -> bool:
        if row["status"] != "writing":
            return False
        if time.time() - row["created_at"] > STALE_WRITER_S:
            return True
        if row["writer_host"] == self.host and row["writer_pid"] == os.getpid():
            return row["id"] not in _WRITING
        return row["writer_host"] == self.host and not pid_alive(int(row["writer_pid"] or 0))

    @staticmethod
    def _remove_folder(folder: Path) -> None:
        # A folder that cannot be removed now (a file still mapped on Windows) is left for sweep().
        shutil.rmtree(folder, ignore_errors=True)

    # -- disk -------------------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes of all caches and indexes, ready or being written."""
        caches = self.db.execute("SELECT COALESCE(sum(bytes), 0) FROM caches").fetchone()[0]
        indexes = self.db.execute("SELECT COALESCE(sum(bytes), 0) FROM indexes").fetchone()[0]
        return int(caches) + int(indexes)

    def cache_bytes(self, cache_id: str) -> int:
        """A cache's bytes plus those of its ready indexes."""
        row = self.db.execute(
            "SELECT c.bytes + COALESCE((SELECT sum(bytes) FROM indexes WHERE cache_id = c.id "
            "AND status = 'ready'), 0) FROM caches c WHERE c.id = ?", [cache_id]).fetchone()
        return int(row[0]) if row else 0

    def make_room(self, needed: int, keep: str | None = None) -> list[str]:
        """Evict least-recently-used ready caches (not `keep`) until `needed` more bytes fit the budget.

        Raises StoreError when `needed` alone exceeds the budget. Returns the evicted cache ids.
        """
        budget = self.budget_bytes
        if needed > budget:
            raise StoreError(f"This cache needs {format_bytes(needed)}, more than the whole disk budget "
                             f"({format_bytes(budget)}), so it is not saved.",
                             "Raise the budget with `python -m engine library budget SIZE`.")
        evicted = []
        rows = self.db.execute("SELECT id FROM caches WHERE status = 'ready' AND id != ? ORDER BY last_used_at",
                               [keep or ""]).fetchall()
        for (cache_id,) in rows:
            if self.used_bytes() + needed <= budget:
                break
            self.delete_cache(cache_id)
            evicted.append(cache_id)
        return evicted

    def free_bytes(self) -> int | None:
        """Free bytes on the library's disk (None when it cannot be measured)."""
        return _free_bytes(self.root)

    def check_free_space(self, needed: int, what: str = "cache") -> None:
        """Raise StoreError (nothing written) when the disk has less than `needed` bytes free."""
        free = shutil.disk_usage(self.root).free
        if free < needed:
            raise disk_full_error(needed, free, f"saving this document's {what}")

    # -- crash debris -----------------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Remove what crashes leave: 'writing' rows of dead writers (and their files, temporary ones
        included) and folders without a row. Returns (and adds to self.notices) what was removed."""
        removed: list[str] = []
        folders = {p.name: p for p in (self.root / "caches").iterdir() if p.is_dir()}  # before reading rows
        for table in ("indexes", "caches"):
            for row in list(self.db.query(f"SELECT * FROM {table} WHERE status = 'writing'")):
                if self._writer_dead(row):
                    folder = (self.index_dir(row["cache_id"], row["id"]) if table == "indexes"
                              else self.cache_dir(row["id"]))
                    what = "cache" if table == "caches" else "index"
                    if self.abort_entry(table, row["id"], folder):
                        removed.append(f"an unfinished {what} write")
                    elif not self.read_only_reason:  # its files are gone; the row goes when there is space
                        self.read_only_reason = f"The disk is full ({format_bytes(_free_bytes(self.root) or 0)} free)."
                        self.notices.append("library is read-only until there is space: the disk is full, so an "
                                            f"unfinished {what} write could not be cleared")
        caches = {row[0] for row in self.db.execute("SELECT id FROM caches").fetchall()}
        indexes = {row[0] for row in self.db.execute("SELECT id FROM indexes").fetchall()}
        for name, folder in folders.items():
            if not folder.exists():  # removed above
                continue
            if name not in caches:
                self._remove_folder(folder)
                removed.append(f"cache files without a library entry ({name[:12]})")
                continue
            index_root = folder / "index"
            for index_folder in index_root.iterdir() if index_root.is_dir() else ():
                if index_folder.name not in indexes:
                    self._remove_folder(index_folder)
                    removed.append(f"index files without a library entry ({index_folder.name[:12]})")
        self.notices += [f"library: removed {text}" for text in removed]
        return removed


def disk_full_error(needed: int | None, free: int | None = None,
                    doing: str = "saving this document's cache") -> StoreError:
    """The StoreError for a full disk while `doing` (what was tried, e.g. "saving this document's index")."""
    free_text = f"; {format_bytes(free)} are free" if free is not None else ""
    need_text = f" needs {format_bytes(needed)}" if needed is not None else " needs more space"
    error = StoreError(f"The disk is full: {doing}{need_text}{free_text}, so it was not saved and the library is "
                       "unchanged.",
                       "Free some disk space, remove documents (`python -m engine library remove ID`) or lower the "
                       "disk budget.")
    error.disk_full = True
    return error


def library_damaged_error(root: Path, reason: str) -> LibraryDamagedError:
    """The error for a damaged folio.db; keeps a copy of the damaged file (once per distinct damage)."""
    try:
        copy, copy_note = keep_damaged_copy(root), ""
    except OSError as error:
        copy, copy_note = None, f" No copy of it could be kept ({error.strerror or error})."
    kept = f" A copy of the damaged file is kept in {copy}." if copy else copy_note
    return LibraryDamagedError(
        f"The document library is damaged ({root / 'folio.db'}: {reason}), so Folio answers without it and caches "
        f"nothing.{kept}",
        "Start a new library with `python -m engine library reset` (your documents are not touched; open them "
        "again to add them).", copy)


def keep_damaged_copy(root: Path) -> Path:
    """Copy folio.db (and its -wal) into root/damaged/, once per distinct content; returns the copy's path."""
    source = root / "folio.db"
    with open(source, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()[:12]
    folder = root / DAMAGED_FOLDER
    existing = sorted(folder.glob(f"folio-*-{digest}.db"))
    if existing:
        return existing[0]
    folder.mkdir(exist_ok=True)
    copy = folder / f"folio-{dt.datetime.now():%Y%m%d-%H%M%S}-{digest}.db"
    shutil.copyfile(source, copy)
    if (root / "folio.db-wal").exists():
        shutil.copyfile(root / "folio.db-wal", copy.with_name(copy.name + "-wal"))
    return copy


def reset_damaged_library(root: Path) -> Path | None:
    """Start a new, empty library in `root` when its folio.db is damaged: the damaged file is copied aside first
    (root/damaged/), then folio.db and its cache files are removed. Returns the copy; raises StoreError when the
    library is not damaged (nothing is touched then)."""
    try:
        Store(root, sweep=False).close()
    except LibraryDamagedError as error:
        copy = error.copy or keep_damaged_copy(root)
    else:
        raise StoreError(f"The document library in {root} is not damaged, so it was not reset.",
                         "Remove documents one by one with `python -m engine library remove ID`.")
    for name in ("folio.db", "folio.db-wal", "folio.db-shm"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "caches", ignore_errors=True)
    Store(root).close()
    return copy


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _sqlite_code(error: BaseException) -> int:
    """SQLite's primary result code of an sqlite3 error (0 for other errors)."""
    return (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF


def _damaged(error: BaseException) -> bool:
    """Whether `error` means the database file is damaged (not a database, malformed, or its quick check failed)."""
    damaged_codes = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return _sqlite_code(error) in damaged_codes or type(error) is sqlite3.DatabaseError


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether `error` means the disk is full: SQLITE_FULL or ENOSPC, or an I/O error while almost no space is
    left (SQLite reports a shared-memory file it cannot extend as an I/O error)."""
    if _sqlite_code(error) == sqlite3.SQLITE_FULL or getattr(error, "errno", None) == errno.ENOSPC:
        return True
    io_error = _sqlite_code(error) in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) or isinstance(error, OSError)
    free = _free_bytes(folder)
    return bool(io_error and free is not None and free < LOW_SPACE_BYTES)


def _one(db: sqlite_utils.Database, sql: str, params: list) -> dict | None:
    rows = list(db.query(sql, params))
    return rows[0] if rows else None


def _strip_comments(script: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in script.splitlines())
