"""The fault matrix, the library: a full disk at each write, a disk full from the start, a document removed while it
is being read, a damaged folio.db. In every case the answer still comes, the message says what happened and what to
do, nothing partial is left behind, and the library keeps working (read-only while the disk is full).

Full disks are real: a small tmpfs (tests.faults.small_disk) where this machine lets the tests mount one; elsewhere
those tests skip and the fault-injected ones below cover the same code."""

from __future__ import annotations

import errno
import gc
import json
import sqlite3
import textwrap

import pytest

from engine import persist
from engine.cli import main
from engine.config import EngineConfig
from engine.events import Progress
from engine.generate import Finished
from engine.ingest import Document, read_document
from engine.session import DocumentSession
from engine.store import Store
from tests.faults import ASK_OPTIONS, LIGHT_TEXT, ROOT, engine_env, fill_disk, small_disk

CONFIG = EngineConfig(attention="exact", n_sink=8, n_window=32, top_k=16, max_new_tokens=6)


def light_document(number: int = 0) -> Document:
    return Document(LIGHT_TEXT + f" Edition {number}.", "light", None, f"{number:064d}")


def answer(session: DocumentSession, question: str = "When was it lit?") -> Finished:
    finished = [e for e in session.ask(question) if isinstance(e, Finished)]
    assert finished and finished[-1].stats.new_tokens > 0, "the answer comes"
    return finished[-1]


def ask_cli(capsys, doc, model_dir, *extra) -> dict:
    """`ask --json` in this process; fails unless it exits 0 with one JSON object on stdout."""
    capsys.readouterr()
    code = main(["ask", str(doc), "When was it lit?", "--model", str(model_dir), *ASK_OPTIONS, *extra, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def leftovers(root) -> list[str]:
    """Temporary files, and cache or index folders without a row: what a failed write must not leave."""
    store = Store(root, sweep=False)
    try:
        caches = {row["id"] for row in store.db["caches"].rows}
        indexes = {row["id"] for row in store.db["indexes"].rows}
    finally:
        store.close()
    found = [str(p.relative_to(root)) for p in root.rglob("*.tmp")]
    for folder in (root / "caches").iterdir():
        if folder.name not in caches:
            found.append(f"cache folder {folder.name[:8]}")
        for index in (folder / "index").iterdir() if (folder / "index").is_dir() else ():
            if index.name not in indexes:
                found.append(f"index folder {index.name[:8]}")
    return found


# -- a document removed while an ask reads it ------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["prefill", "index", "saving"])
def test_removing_the_document_while_it_is_read_lets_the_answer_finish_and_says_nothing_was_saved(tiny_loaded,
                                                                                                   stage):
    document = light_document()
    session = DocumentSession(tiny_loaded, document, CONFIG, Store())
    other = Store()  # another process's view of the library (its own connection)
    removed = False
    finished = None
    for event in session.ask("When was it lit?"):
        if not removed and isinstance(event, Progress) and event.stage == stage:
            assert other.delete_document(other.find_document(document.sha256))
            removed = True
        if isinstance(event, Finished):
            finished = event
    assert removed and finished is not None and finished.stats.new_tokens > 0
    assert "the document was removed from the library while it was being read" in session.cache_notice
    assert other.list_documents() == [] and other.db["caches"].count == 0
    assert leftovers(other.root) == []
    again = DocumentSession(tiny_loaded, document, CONFIG, Store())
    answer(again)
    assert not again.cached and again.cache_notice is None  # added again, and saved


# -- a full disk ---------------------------------------------------------------------------------------------------
# Runs `ask` with the disk made full (the filler takes every free byte) as the first index file is written: the write
# fails with ENOSPC, and SQLite then cannot record that either (its WAL cannot grow).
FULL_AT_INDEX_WRITE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import engine.persist as persist
    from tests.faults import fill_disk
    real = persist.write_array
    def write_array(folder, name, array):
        if folder.parent.name == "index":
            fill_disk(Path(sys.argv[1]), leave_free=0)
        return real(folder, name, array)
    persist.write_array = write_array
    from engine.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow  # a subprocess and four asks; quick twins: the "writing the index files" case, the injected one
def test_disk_full_during_the_index_write_answers_cleans_up_and_the_library_stays_usable(tiny_model_dir, tmp_path,
                                                                                         capsys, monkeypatch):
    import subprocess
    import sys

    doc = tmp_path / "light.txt"
    doc.write_text(LIGHT_TEXT)
    with small_disk(tmp_path / "disk", "4m") as disk:
        monkeypatch.setenv("FOLIO_DATA_DIR", str(disk))
        result = subprocess.run([sys.executable, "-c", FULL_AT_INDEX_WRITE, str(disk), "ask", str(doc), "When?",
                                 "--model", str(tiny_model_dir), *ASK_OPTIONS, "--json"], cwd=ROOT,
                                env=engine_env(disk), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        first = json.loads(result.stdout)
        assert first["new_tokens"] > 0 and not first["cached"]
        assert "index not saved: The disk is full: saving this document's index needs" in first["cache_notice"]
        assert leftovers(disk) == []
        # While the disk is still full, the library works read-only: it lists, and the K/V saved before the
        # index write is reused (its index is built again in memory).
        capsys.readouterr()
        assert main(["library", "list", "--json"]) == 0
        listing = json.loads(capsys.readouterr().out)
        assert [d["title"] for d in listing["documents"]] == ["light"] and listing["documents"][0]["cached"]
        second = ask_cli(capsys, doc, tiny_model_dir)
        assert second["cached"] and second["answer"] == first["answer"]
        assert "disk is full" in second["cache_notice"]
        (disk / "filler").unlink()  # space again: the index is saved and the library's debris swept
        ask_cli(capsys, doc, tiny_model_dir)
        third = ask_cli(capsys, doc, tiny_model_dir)
        assert third["cached"] and third["cache_notice"] is None
        assert leftovers(disk) == []


def test_a_disk_with_16_kib_free_from_the_start_answers_without_the_library_and_says_the_disk_is_full(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    doc = tmp_path / "light.txt"
    doc.write_text(LIGHT_TEXT)
    with small_disk(tmp_path / "disk", "1m") as disk:
        fill_disk(disk, leave_free=16 * 1024)
        data = disk / "folio"
        monkeypatch.setenv("FOLIO_DATA_DIR", str(data))
        out = ask_cli(capsys, doc, tiny_model_dir)
        assert out["new_tokens"] > 0 and not out["cached"]
        assert "disk is full" in out["cache_notice"] and "I/O error" not in out["cache_notice"]
        assert "writable" not in out["cache_notice"]
        (disk / "filler").unlink()  # with space, what the failed attempt left is a library that works
        assert ask_cli(capsys, doc, tiny_model_dir)["cache_notice"] is None
        assert ask_cli(capsys, doc, tiny_model_dir)["cached"]


def _index_file(folder, name, array) -> bool:
    return folder.parent.name == "index"


# Where a write fails on a full disk: (owner, attribute) is wrapped to fill the disk just before it runs (when `when`
# says so for its arguments).
WRITES = [
    ("adding the document", Store, "add_document", None),
    ("saving the token spans", Store, "save_token_spans", None),
    ("writing the K/V files", persist, "write_array", None),
    ("committing the cache", Store, "commit_entry", None),
    ("before the index", persist, "save_index", None),
    ("writing the index files", persist, "write_array", _index_file),
    ("recording the last use", Store, "touch", None),
]


@pytest.mark.parametrize(("case", "owner", "attribute", "when"), WRITES, ids=[row[0] for row in WRITES])
def test_a_disk_that_fills_up_at_each_write_still_answers_and_leaves_nothing_partial(tiny_model_dir, tmp_path, capsys,
                                                                                     monkeypatch, case, owner,
                                                                                     attribute, when):
    doc = tmp_path / "light.txt"
    doc.write_text(LIGHT_TEXT)
    real = getattr(owner, attribute)
    with small_disk(tmp_path / "disk", "4m") as disk:
        monkeypatch.setenv("FOLIO_DATA_DIR", str(disk))
        if attribute == "touch":
            ask_cli(capsys, doc, tiny_model_dir)  # a saved document: the next ask records its use

        def full_first(*args, **kwargs):
            if when is None or when(*args, **kwargs):
                fill_disk(disk, leave_free=0)
            return real(*args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(owner, attribute, full_first)
            out = ask_cli(capsys, doc, tiny_model_dir)
        assert out["new_tokens"] > 0
        assert "disk is full" in (out["cache_notice"] or "").lower(), out["cache_notice"]
        assert leftovers(disk) == [], case
        (disk / "filler").unlink()
        ask_cli(capsys, doc, tiny_model_dir)
        assert ask_cli(capsys, doc, tiny_model_dir)["cached"]


# -- the same faults, injected (for machines that may not mount a file system) -------------------------------------
def sqlite_full() -> sqlite3.OperationalError:
    """The error SQLite raises when a write finds the disk full."""
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode, error.sqlite_errorname = sqlite3.SQLITE_FULL, "SQLITE_FULL"
    return error


def test_injected_enospc_in_the_index_write_and_sqlite_full_on_its_rollback(tiny_loaded, monkeypatch):
    """What a full disk does to the index write, without a real one: the index files fail with ENOSPC, and every
    SQLite commit fails with SQLITE_FULL until the index files are removed."""
    real_write, real_commit = persist.write_array, Store._commit
    state = {"full": False, "index_files": 0}

    def write_array(folder, name, array):
        if "index" in str(folder):
            state["full"] = True
            (folder / (name + ".tmp")).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(folder, name, array)

    def commit(self):
        if state["full"] and any(self.root.rglob("index/*/*")):
            self.db.conn.execute("ROLLBACK")
            raise sqlite_full()
        return real_commit(self)

    monkeypatch.setattr(persist, "write_array", write_array)
    monkeypatch.setattr(Store, "_commit", commit)
    session = DocumentSession(tiny_loaded, light_document(), CONFIG, Store())
    answer(session)
    assert "index not saved: The disk is full: saving this document's index needs" in session.cache_notice
    assert leftovers(Store().root) == []


def test_injected_sqlite_full_in_the_sweep_leaves_the_library_readable(tiny_loaded, monkeypatch):
    store = Store()
    doc_id = store.add_document(light_document())
    store.db["caches"].insert({"id": "c" * 64, "document_id": doc_id, "model_name": "m", "model_fingerprint": "f",
                               "tokenizer_fingerprint": "t", "template_sha256": "s", "compute_dtype": "float32",
                               "kv_dtype": "float16", "layout_version": 2, "prefix_sha256": "p", "prefix_tokens": 1,
                               "max_train_queries": 1, "n_layers": 2, "bytes": 0, "status": "writing",
                               "writer_pid": 2**22 + 12345, "writer_host": store.host, "created_at": 0.0,
                               "last_used_at": 0.0})  # a dead writer's row, which the sweep removes
    store.close()

    def full(self):
        self.db.conn.execute("ROLLBACK")
        raise sqlite_full()

    monkeypatch.setattr(Store, "_commit", full)
    reopened = Store()
    assert [d.title for d in reopened.list_documents()] == ["light"]
    assert any("disk is full" in notice for notice in reopened.notices)


# -- a damaged folio.db --------------------------------------------------------------------------------------------
def _random_bytes(path):
    path.write_bytes(bytes((i * 131 + 7) % 256 for i in range(64 * 1024)))


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble_pages(path):
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 4096):  # every page but the first (the header and schema root)
        data[offset + 8: offset + 200] = b"\xa5" * 192
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_random_bytes, pytest.param(_cut_in_half, marks=pytest.mark.slow),
                                    pytest.param(_garble_pages, marks=pytest.mark.slow)],
                         ids=["random bytes", "cut in half", "pages garbled"])
def test_a_damaged_library_still_answers_keeps_a_copy_and_offers_a_new_library(tiny_model_dir, tmp_path, capsys,
                                                                                damage):
    doc = tmp_path / "light.txt"
    doc.write_text(LIGHT_TEXT)
    ask_cli(capsys, doc, tiny_model_dir)
    with Store() as store:
        for extra in ("light two", "light three"):  # a few documents, so the file has pages to damage
            other = tmp_path / f"{extra}.txt"
            other.write_text(LIGHT_TEXT + extra * 400)
            store.add_document(read_document(other))
        root = store.root
    gc.collect()  # no connection of this process is open when the file is damaged (SQLite then checkpoints the WAL)
    assert not (root / "folio.db-wal").exists()
    database = root / "folio.db"
    damage(database)
    damaged = database.read_bytes()

    out = ask_cli(capsys, doc, tiny_model_dir)
    assert out["new_tokens"] > 0 and not out["cached"]
    assert "library is damaged" in out["cache_notice"] and "library reset" in out["cache_notice"]
    copies = list((root / "damaged").iterdir())
    assert len(copies) == 1 and copies[0].read_bytes() == damaged and str(copies[0]) in out["cache_notice"]
    ask_cli(capsys, doc, tiny_model_dir)
    assert len(list((root / "damaged").iterdir())) == 1  # one copy of the same damage

    capsys.readouterr()
    assert main(["library", "list"]) == 2
    assert "library is damaged" in capsys.readouterr().err
    assert main(["library", "reset"]) == 0
    assert "new library" in capsys.readouterr().out
    assert ask_cli(capsys, doc, tiny_model_dir)["cached"] is False
    assert ask_cli(capsys, doc, tiny_model_dir)["cached"]
    assert copies[0].read_bytes() == damaged  # the copy stays


def test_library_reset_refuses_a_healthy_library(capsys):
    Store().add_document(light_document())
    capsys.readouterr()
    assert main(["library", "reset"]) == 2
    assert "not damaged" in capsys.readouterr().err
    assert len(Store().list_documents()) == 1
