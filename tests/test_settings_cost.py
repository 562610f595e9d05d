"""settings_cost says what the next open of a document does: for each kind of change, a document is opened under the
old settings with a library, opened again under the new ones, and what that open did (read the document again, build
an index, load one) must be what the cost stated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.change_cost import FROM_KV, KEPT, NOT_NEEDED, REBUILT, RELOADED, settings_cost
from engine.config import RELOAD_MODEL_FIELDS, EngineConfig
from engine.errors import CancelledError
from engine.events import CancelToken
from engine.ingest import read_document
from engine.model import load_model
from engine.session import DocumentSession
from engine.store import Store
from tests.conftest import make_tiny_model_dir

TEXT = "The lighthouse on Varnholm was first lit in 1865 by Anders Brekke, who kept it for thirty years. " * 12


@pytest.fixture
def base(tiny_model_dir) -> EngineConfig:
    """tiny_loaded's settings, retrieval with a small static set (most of the document is offloaded and indexed)."""
    return EngineConfig(model=str(tiny_model_dir), device="cpu", dtype="float32", cpu_weights="full",
                        attention="retrieval", n_sink=4, n_window=16, top_k=4, max_new_tokens=8)


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "lighthouse.txt"
    path.write_text(TEXT, encoding="utf-8")
    return read_document(path)


@pytest.fixture
def models(tiny_loaded, base):
    """The loaded model for a config: tiny_loaded for base's model settings, else loaded (once per test)."""
    loaded = {_model_key(base): tiny_loaded}

    def model_for(config: EngineConfig):
        key = _model_key(config)
        if key not in loaded:
            loaded[key] = load_model(config.model, config.device, config.dtype, weights=config.weights,
                                     cpu_weights=config.cpu_weights)
        return loaded[key]

    return model_for


def _model_key(config: EngineConfig) -> tuple:
    return tuple(getattr(config, name) for name in RELOAD_MODEL_FIELDS)


def _index_ids(store: Store) -> set[str]:
    return {row["id"] for row in store.db.query("SELECT id FROM indexes WHERE status = 'ready'")}


def open_document(model_for, document, config: EngineConfig, store: Store) -> tuple[str, str]:
    """Open the document under `config` with the library; (what happened to its K/V, to its index), in
    settings_cost's words: the K/V KEPT (loaded) or REBUILT (the document was prefilled); the index KEPT (loaded),
    FROM_KV (built from stored K/V), REBUILT (built after a prefill) or NOT_NEEDED (full or window attention)."""
    before = _index_ids(store)
    session = DocumentSession(model_for(config), document, config, store=store)
    stages = {event.stage for event in session.prepare()}
    assert not [n for n in session.cache_notices if "not saved" in n]
    kv = REBUILT if "prefill" in stages else KEPT
    assert (kv == KEPT) == session.cached
    if session.attention.mode in ("full", "window"):
        return kv, NOT_NEEDED
    built = bool(_index_ids(store) - before)
    return kv, (REBUILT if kv == REBUILT else FROM_KV if built else KEPT)


def observed_cost(model_for, document, old: EngineConfig, new: EngineConfig, tmp_path: Path) -> tuple[str, str]:
    with Store(tmp_path / "library") as store:
        assert open_document(model_for, document, old, store)[0] == REBUILT  # a new library: the first open reads
        return open_document(model_for, document, new, store)


def stated(old: EngineConfig, new: EngineConfig) -> tuple[str, str]:
    cost = settings_cost(old, new)
    return cost.kv.verdict, cost.index.verdict


KEEP_EVERYTHING = [{"top_k": 9}, {"search_effort": 7}, {"attention_share": 0.5}, {"max_new_tokens": 12},
                   {"temperature": 0.7}, {"prefill_chunk": 64}]


@pytest.mark.parametrize("change", KEEP_EVERYTHING, ids=lambda c: next(iter(c)))
def test_search_and_answer_settings_keep_everything(models, document, base, tmp_path, change):
    new = dataclasses.replace(base, **change)
    cost = settings_cost(base, new)
    assert (cost.model.verdict, *stated(base, new)) == (KEPT, KEPT, KEPT)
    assert not cost.heavy and cost.message() == ""
    assert "nothing is rebuilt" in cost.describe()
    assert observed_cost(models, document, base, new, tmp_path) == (KEPT, KEPT)


@pytest.mark.parametrize("change", [{"n_window": 32}, {"n_sink": 8}, {"attention": "exact"}],
                         ids=lambda c: next(iter(c)))
def test_build_settings_rebuild_only_the_index_from_the_stored_kv(models, document, base, tmp_path, change):
    new = dataclasses.replace(base, **change)
    cost = settings_cost(base, new)
    assert (cost.model.verdict, *stated(base, new)) == (KEPT, KEPT, FROM_KV)
    assert cost.index.causes == tuple(change)
    assert "no document is read again" in cost.message() and "rebuilt from the stored K/V" in cost.message()
    assert observed_cost(models, document, base, new, tmp_path) == (KEPT, FROM_KV)


@pytest.mark.parametrize("mode", ["full", "window"])
def test_leaving_retrieval_keeps_the_kv_and_needs_no_index(models, document, base, tmp_path, mode):
    new = dataclasses.replace(base, attention=mode)
    assert stated(base, new) == (KEPT, NOT_NEEDED)
    assert f"{mode} attention needs no index" in settings_cost(base, new).describe()
    assert observed_cost(models, document, base, new, tmp_path) == (KEPT, NOT_NEEDED)


@pytest.mark.parametrize("mode", ["full", "window"])
def test_coming_to_retrieval_builds_the_index_from_the_stored_kv(models, document, base, tmp_path, mode):
    old = dataclasses.replace(base, attention=mode)
    assert stated(old, base) == (KEPT, FROM_KV)
    assert settings_cost(old, base).index.causes == ("attention",)
    assert observed_cost(models, document, old, base, tmp_path) == (KEPT, FROM_KV)


def test_an_index_the_library_still_holds_is_loaded_as_the_cost_says(models, document, base, tmp_path):
    full = dataclasses.replace(base, attention="full")
    cost = settings_cost(full, base)
    assert cost.index.verdict == FROM_KV and "unless the library still holds one" in cost.message()
    with Store(tmp_path / "library") as store:
        open_document(models, document, base, store)  # builds the index for base
        open_document(models, document, full, store)
        assert open_document(models, document, base, store) == (KEPT, KEPT)


def test_auto_counts_as_retrieval_for_the_documents_it_answers_with_retrieval(models, document, base, tmp_path,
                                                                             monkeypatch):
    auto = dataclasses.replace(base, attention="auto")
    new = dataclasses.replace(auto, n_window=32)
    cost = settings_cost(auto, new)
    assert stated(auto, new) == (KEPT, FROM_KV) and cost.automatic
    assert "only for the documents it answers with retrieval" in cost.describe()
    # this short document on a CPU: auto answers with full attention, which needs no index
    assert observed_cost(models, document, auto, new, tmp_path / "short") == (KEPT, NOT_NEEDED)
    monkeypatch.setattr("engine.attention_mode.CPU_RETRIEVAL_FROM_TOKENS", 1)  # now auto answers with retrieval
    assert observed_cost(models, document, auto, new, tmp_path / "long") == (KEPT, FROM_KV)
    assert stated(base, auto) == (KEPT, KEPT)
    assert observed_cost(models, document, base, auto, tmp_path / "same") == (KEPT, KEPT)


@pytest.mark.parametrize("change", [{"dtype": "bfloat16"}, {"cpu_weights": "int8"}, {"kv_dtype": "float32"}],
                         ids=lambda c: next(iter(c)))
def test_settings_that_change_the_kv_read_the_document_again(models, document, base, tmp_path, change):
    new = dataclasses.replace(base, **change)
    cost = settings_cost(base, new)
    assert stated(base, new) == (REBUILT, REBUILT) and cost.kv.causes == tuple(change)
    assert cost.model.verdict == (RELOADED if set(change) <= set(RELOAD_MODEL_FIELDS) else KEPT)
    assert "read again" in cost.message()
    assert observed_cost(models, document, base, new, tmp_path) == (REBUILT, REBUILT)


def test_another_model_reloads_and_reads_again(models, document, base, tmp_path):
    other = dataclasses.replace(base, model=str(make_tiny_model_dir(tmp_path / "three-layers", layers=3)))
    cost = settings_cost(base, other)
    assert (cost.model.verdict, *stated(base, other)) == (RELOADED, REBUILT, REBUILT)
    assert observed_cost(models, document, base, other, tmp_path) == (REBUILT, REBUILT)


def test_a_reload_that_keeps_the_kv_says_so(models, document, base, tmp_path):
    """The device set to "auto" on this machine resolves to what it was (CPU, float32): the model reloads, the K/V
    stay. Skipped where "auto" would pick a GPU."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    new = dataclasses.replace(base, device="auto")
    cost = settings_cost(base, new)
    assert (cost.model.verdict, *stated(base, new)) == (RELOADED, KEPT, KEPT)
    assert cost.model.causes == ("device",) and "stored K/V are kept" in cost.message()
    assert observed_cost(models, document, base, new, tmp_path) == (KEPT, KEPT)


def test_no_change_says_nothing(base):
    cost = settings_cost(base, base)
    assert cost.changed == () and cost.describe() == "" and not cost.heavy


@pytest.mark.parametrize("mode", ["retrieval", "full"])
def test_an_open_session_takes_a_change_that_keeps_everything_without_opening_again(models, document, base, mode,
                                                                                    tmp_path):
    """What the app does on such a change (RealBackend.apply_settings): the session answers with the new search
    settings from its cache in memory; a change that needs another index or K/V asks for a new session."""
    config = dataclasses.replace(base, attention=mode, prefill_chunk=32)
    with Store(tmp_path / "library") as store:  # with a library, full attention prefills into a RetrievalCache
        stopped = DocumentSession(models(config), document, config, store=store)
        cancel = CancelToken()
        with pytest.raises(CancelledError):
            for _ in stopped.prepare(cancel):
                cancel.cancel()
        assert stopped.cache is not None  # half prefilled
        assert stopped.use_config(dataclasses.replace(config, top_k=9, n_window=32)) == (mode == "full")
    session = DocumentSession(models(config), document, config)
    list(session.prepare())
    cache = session.cache
    searched = dataclasses.replace(config, top_k=9, search_effort=7, temperature=0.5)
    assert settings_cost(config, searched).describe().startswith("Applies at once")
    assert session.use_config(searched) and session.cache is cache and session.config == searched
    if mode == "retrieval":
        assert (cache.settings.top_k, cache.settings.effort) == (9, 7)
    window = dataclasses.replace(searched, n_window=32)
    assert session.use_config(window) == (mode == "full")  # full attention has no static set to change
    for other in ({"attention": "window"}, {"kv_dtype": "float32"}):
        assert not session.use_config(dataclasses.replace(searched, **other))
