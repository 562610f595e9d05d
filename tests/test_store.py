"""The document library in one process: reuse, invalidation, damage, disk full, eviction, spans."""

import dataclasses
import errno
import shutil

import numpy as np
import pytest

from engine import persist
from engine.config import EngineConfig
from engine.errors import StoreError
from engine.generate import Finished
from engine.ingest import Document
from engine.session import DocumentSession
from engine.store import Store

CONFIG = EngineConfig(attention="exact", n_sink=8, n_window=32, top_k=16, max_new_tokens=6)
TEXTS = ["the keepers recorded the weather three times a day. ",
         "a lighthouse stands on the island and the light never failed. ",
         "question answering over whole documents with a graph index. "]


def document(number=0, repeat=25):
    text = TEXTS[number] * repeat
    return Document(text=text, title=f"doc{number}", source=None, sha256=f"{number:064d}")


def ask(session, question="why?"):
    return [e for e in session.ask(question) if isinstance(e, Finished)][-1]


def open_session(loaded, number=0, config=CONFIG, store=None):
    return DocumentSession(loaded, document(number), config, store or Store())


def cache_folder(store):
    (folder,) = [p for p in (store.root / "caches").iterdir()]
    return folder


def test_second_session_reuses_the_stored_prefix_and_answers_identically(tiny_loaded):
    first_session = open_session(tiny_loaded)
    first = ask(first_session)
    assert not first_session.cached and first_session.cache_bytes > 0
    assert first.stats.reused_tokens == 0
    second_session = open_session(tiny_loaded)
    second = ask(second_session)
    assert second_session.cached and second_session.cache_notice is None
    assert second.token_ids == first.token_ids
    assert second.stats.reused_tokens == second_session.prefix_tokens  # prefill skipped
    assert ask(second_session).token_ids == first.token_ids  # a new chat resets to the stored prefix


def test_graph_index_round_trip(tiny_loaded):
    config = dataclasses.replace(CONFIG, attention="retrieval", search_effort=32)
    first = ask(open_session(tiny_loaded, config=config))
    session = open_session(tiny_loaded, config=config)
    again = ask(session)
    assert session.cached and again.stats.index_build_s == 0
    assert again.token_ids == first.token_ids


def test_top_k_change_reuses_everything_window_change_reuses_the_kv(tiny_loaded):
    ask(open_session(tiny_loaded))
    top_k = open_session(tiny_loaded, config=dataclasses.replace(CONFIG, top_k=4))
    assert ask(top_k).stats.index_build_s == 0 and top_k.cached
    window = open_session(tiny_loaded, config=dataclasses.replace(CONFIG, n_window=48))
    finished = ask(window)
    assert window.cached and finished.stats.index_build_s > 0  # index rebuilt from the saved queries
    store = Store()
    assert store.db["caches"].count == 1 and store.db["indexes"].count == 2
    reopened = open_session(tiny_loaded, config=dataclasses.replace(CONFIG, n_window=48))
    assert ask(reopened).stats.index_build_s == 0  # ... and saved


@pytest.mark.parametrize(("change", "reason"), [
    ("model", "model changed"),
    ("tokenizer", "tokenizer changed"),
    ("template", "chat template changed"),
    ("dtype", "dtype changed"),
    ("layout", "cache layout version changed"),
])
def test_a_cache_of_another_identity_is_rebuilt_with_the_reason(tiny_loaded, monkeypatch, change, reason):
    ask(open_session(tiny_loaded))
    loaded, config = tiny_loaded, CONFIG
    if change == "model":
        loaded = dataclasses.replace(tiny_loaded, fingerprint="another model")
    elif change == "tokenizer":
        loaded = dataclasses.replace(tiny_loaded, tokenizer_fingerprint="another tokenizer")
    elif change == "template":
        monkeypatch.setattr(tiny_loaded.tokenizer, "chat_template", tiny_loaded.tokenizer.chat_template + "{# v2 #}")
    elif change == "dtype":
        config = dataclasses.replace(CONFIG, kv_dtype="float32")
    else:
        monkeypatch.setattr(persist, "LAYOUT_VERSION", persist.LAYOUT_VERSION + 1)
    session = open_session(loaded, config=config)
    ask(session)
    assert not session.cached
    assert session.cache_notice == f"cache rebuilt: {reason}"
    store = Store()
    assert store.db["caches"].count == 1  # the old one is gone, the rebuilt one saved
    reopened = open_session(loaded, config=config)
    ask(reopened)
    assert reopened.cached and reopened.cache_notice is None


def damage(store, case):
    """Damage the only cache of document 0 in one of the ways the issue lists."""
    cache_id = store.caches_of(store.find_document(document(0).sha256))[0]["id"]
    folder = store.cache_dir(cache_id)
    keys = folder / "layer_001_keys.npy"
    if case == "truncated":
        keys.write_bytes(keys.read_bytes()[:-100])
    elif case == "hash mismatch":
        data = bytearray(keys.read_bytes())
        data[-7] ^= 0xFF
        keys.write_bytes(bytes(data))
    elif case == "missing file":
        keys.unlink()
    elif case == "row without files":
        shutil.rmtree(folder)
    elif case == "files without row":
        with store.transaction() as db:
            store._delete_cache_rows(cache_id)
            assert db["caches"].count == 1  # document 1's cache remains
    return folder


@pytest.mark.parametrize(("case", "message"), [
    ("truncated", "layer_001_keys.npy is truncated"),
    ("hash mismatch", "layer_001_keys.npy does not match its checksum"),
    ("missing file", "layer_001_keys.npy is missing"),
    ("row without files", "its folder is missing"),
    ("files without row", "library: removed cache files without a library entry"),
])
def test_a_damaged_cache_is_reported_removed_and_rebuilt_and_the_rest_is_untouched(tiny_loaded, case, message):
    first = ask(open_session(tiny_loaded, 0))
    ask(open_session(tiny_loaded, 1))
    folder = damage(Store(sweep=False), case)
    session = open_session(tiny_loaded, 0)
    again = ask(session)
    assert not session.cached and message in session.cache_notice
    assert again.token_ids == first.token_ids
    assert folder.exists()  # rebuilt under the same id...
    reopened = open_session(tiny_loaded, 0)
    ask(reopened)
    assert reopened.cached and reopened.cache_notice is None  # ...and valid again
    other = open_session(tiny_loaded, 1)
    ask(other)
    assert other.cached and other.cache_notice is None


def test_a_reopen_hashes_only_the_files_written_to_since_their_last_check(tiny_loaded, monkeypatch):
    """The reopen's fixed cost: a stored cache is hashed once, not at every open, and any write is caught."""
    from engine import arrays

    config = dataclasses.replace(CONFIG, attention="retrieval", search_effort=32)
    first = ask(open_session(tiny_loaded, config=config))
    hashed: list[str] = []
    real = arrays.file_sha256
    monkeypatch.setattr(arrays, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    session = open_session(tiny_loaded, config=config)
    assert ask(session).token_ids == first.token_ids and session.cached
    assert hashed == []  # every file is as Folio wrote it
    keys = cache_folder(Store()) / "layer_001_keys.npy"
    keys.write_bytes(keys.read_bytes())  # the same bytes, written again: hashed, still valid
    session = open_session(tiny_loaded, config=config)
    assert ask(session).token_ids == first.token_ids and session.cached and session.cache_notice is None
    assert hashed == ["layer_001_keys.npy"]
    ask(open_session(tiny_loaded, config=config))
    assert hashed == ["layer_001_keys.npy"]  # its new identity was remembered


def test_a_library_from_before_file_identities_hashes_each_file_once(tiny_loaded, monkeypatch):
    from engine import arrays

    first = ask(open_session(tiny_loaded))
    store = Store()
    with store.transaction() as db:
        db.execute("UPDATE files SET identity = NULL")  # as migration 4 leaves a library's existing files
    hashed: list[str] = []
    real = arrays.file_sha256
    monkeypatch.setattr(arrays, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    session = open_session(tiny_loaded)
    assert ask(session).token_ids == first.token_ids and session.cached
    assert "layer_000_keys.npy" in hashed and "prefix_ids.npy" in hashed
    hashed.clear()
    ask(open_session(tiny_loaded))
    assert hashed == []


def test_a_damaged_index_alone_is_rebuilt_from_the_stored_queries(tiny_loaded):
    first = ask(open_session(tiny_loaded))
    store = Store()
    (index_row,) = list(store.db["indexes"].rows)
    index_folder = store.index_dir(index_row["cache_id"], index_row["id"])
    next(index_folder.iterdir()).unlink()
    session = open_session(tiny_loaded)
    again = ask(session)
    assert session.cached and "index rebuilt: damaged index removed" in session.cache_notice
    assert again.token_ids == first.token_ids


def fail_with_enospc_after(monkeypatch, calls):
    real = persist.write_array
    count = {"n": 0}

    def write(folder, name, array):
        count["n"] += 1
        if count["n"] > calls:
            (folder / (name + ".tmp")).write_bytes(b"half")  # what a real write leaves before failing
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, name, array)

    monkeypatch.setattr(persist, "write_array", write)


def test_disk_full_while_saving_leaves_the_library_as_it_was(tiny_loaded, monkeypatch):
    ask(open_session(tiny_loaded, 0))
    store = Store()
    before = sorted(p.relative_to(store.root) for p in (store.root / "caches").rglob("*"))
    with monkeypatch.context() as patch:
        fail_with_enospc_after(patch, 3)
        session = open_session(tiny_loaded, 1)
        finished = ask(session)  # the answer still comes; the cache is simply not saved
    assert finished.stats.new_tokens > 0
    assert "cache not saved: The disk is full" in session.cache_notice and "needs" in session.cache_notice
    assert sorted(p.relative_to(store.root) for p in (store.root / "caches").rglob("*")) == before
    assert store.db["caches"].count == 1 and not list(store.root.rglob("*.tmp"))
    reopened = open_session(tiny_loaded, 0)
    ask(reopened)
    assert reopened.cached  # the earlier cache still opens
    retried = open_session(tiny_loaded, 1)
    ask(retried)
    assert not retried.cached and retried.cache_notice is None  # with space again, it is saved


def test_save_raises_store_error_on_enospc(tiny_loaded, monkeypatch):
    session = open_session(tiny_loaded, 0)
    session.store = None
    ask(session)  # built, not saved
    store = Store()
    doc_id = store.add_document(session.document)
    identity = persist.CacheIdentity.of(tiny_loaded, session.prompt.prefix_ids, session.cache.settings)
    fail_with_enospc_after(monkeypatch, 2)
    with pytest.raises(StoreError, match="disk is full.*needs .*library is unchanged"):
        list(persist.save_cache_steps(store, doc_id, identity, session.prompt.prefix_ids, session.cache))
    assert store.get_cache(identity.cache_id) is None and not store.cache_dir(identity.cache_id).exists()


def test_lru_eviction_under_a_small_budget_keeps_documents_listed(tiny_loaded):
    first = open_session(tiny_loaded, 0)
    ask(first)
    Store().set_budget(int(first.cache_bytes * 2.5))
    ask(open_session(tiny_loaded, 1))
    ask(open_session(tiny_loaded, 0))  # document 0 is now the most recently used
    third = open_session(tiny_loaded, 2)
    ask(third)
    assert "disk budget: removed 1 least recently used cache(s)" in third.cache_notice
    store = Store()
    listed = {d.title: d for d in store.list_documents()}
    assert set(listed) == {"doc0", "doc1", "doc2"}
    assert listed["doc0"].cached and listed["doc2"].cached and not listed["doc1"].cached
    assert store.used_bytes() <= store.budget_bytes
    assert len(list((store.root / "caches").iterdir())) == 2


def test_a_cache_larger_than_the_budget_is_not_saved(tiny_loaded):
    Store().set_budget(1000)
    session = open_session(tiny_loaded)
    assert ask(session).stats.new_tokens > 0
    assert "more than the whole disk budget" in session.cache_notice and session.cache_bytes == 0


def test_deleting_a_document_deletes_its_files(tiny_loaded):
    ask(open_session(tiny_loaded, 0))
    ask(open_session(tiny_loaded, 1))
    store = Store()
    doc_id = store.find_document(document(0).sha256)
    assert store.delete_document(doc_id)
    assert [d.title for d in store.list_documents()] == ["doc1"]
    assert len(list((store.root / "caches").iterdir())) == 1
    owners = {row["id"] for row in store.db["caches"].rows} | {row["id"] for row in store.db["indexes"].rows}
    assert {row["owner"] for row in store.db["files"].rows} == owners
    assert not store.delete_document(doc_id)


def test_schema_migrations_are_recorded_once(tmp_path):
    Store(tmp_path / "lib").close()
    store = Store(tmp_path / "lib")
    assert store.schema_version() == 4
    assert [row["version"] for row in store.db["migrations"].rows] == [1, 2, 3, 4]
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_documents_keep_text_pages_and_per_token_spans(tiny_loaded):
    session = open_session(tiny_loaded)
    ask(session)
    store = Store()
    doc_id = store.find_document(document(0).sha256)
    assert store.load_document(doc_id) == dataclasses.replace(document(0))
    spans = store.token_spans(doc_id, tiny_loaded.tokenizer_fingerprint)
    assert spans.shape == (session.prompt.doc_token_end - session.prompt.doc_token_start, 3)
    doc_ids = session.prompt.prefix_ids[session.prompt.doc_token_start:session.prompt.doc_token_end]
    text = document(0).text
    for token, (page, start, end) in zip(doc_ids[:50], spans[:50], strict=True):
        assert page == 1 and tiny_loaded.tokenizer.decode([token]) == text[start:end]
    info = store.get_document(doc_id)
    assert info.tokens == len(spans) and info.characters == len(text) and info.sha256 == document(0).sha256

def test_arrays_are_never_pickled(tmp_path):
    from engine.arrays import write_array

    with pytest.raises(ValueError, match="no pickling"):
        write_array(tmp_path, "x.npy", np.array([object()], dtype=object))
