"""Save a document's RetrievalCache (K/V, sampled queries, indexes) into the Store and restore it.

Identity. A cache is keyed by sha256 over (model fingerprint, tokenizer fingerprint, chat-template
hash, compute dtype, K/V dtype, layout version, training-query cap, sha256 of the prefix token ids).
An index is keyed by (cache id, method, n_sink, n_window, build params, index version): it covers only the
offloaded keys, which n_sink/n_window decide; top_k, search effort and the budget's attention share do not change
it (its attention curves are stored with it). So changing
top-k reuses everything, changing the window reuses the K/V and rebuilds only the index (from the
saved queries), and anything else that changes the K/V makes a new cache. A document keeps one cache:
a cache of another identity is deleted when the new one is needed, with the reason.

Files: per layer `layer_NNN_keys.npy`, `_values.npy` ([H_kv, T, D], kv_dtype), `_queries.npy`
([H, Nq, D] float16), plus `prefix_ids.npy` (int32 [T]); per index and layer
`layer_NNN_<name>.npy` for each array of `RetrievalLayer.index_arrays()` (the index's `to_arrays()` and the
attention curves).
Verification on open: size, dtype and shape of every file used, and the full sha256 of each file changed since
its last check (in parallel threads; a file whose identity on disk is the one recorded at its write or last check
is not hashed again: engine/arrays.py).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.arrays import DamagedFileError, FileRecord, load_array, npy_bytes, sync_folder, verify_files, write_array
from engine.cache import WINDOW_ONLY, PrefixArrays, RetrievalCache, RetrievalSettings
from engine.errors import StoreError
from engine.events import CancelToken, Progress, ProgressMeter
from engine.model import LoadedModel
from engine.retrieval import attention_scale
from engine.store import Store, disk_full_error

LAYOUT_VERSION = 2  # 2: one prefill query in 8 to 16 trains the index (was: at most 2,048)
INDEX_VERSION = 2  # 2: each layer's index files include its attention curves (engine.index.budget)
KV_FILES = ("keys", "values", "queries")
PREFIX_FILE = "prefix_ids.npy"


@dataclass(frozen=True)
class CacheIdentity:
    """Everything that decides the bytes of a document's K/V. `cache_id` hashes all but model_name."""

    model_name: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    template_sha256: str
    compute_dtype: str
    kv_dtype: str
    layout_version: int
    prefix_sha256: str
    prefix_tokens: int
    max_train_queries: int

    @classmethod
    def of(cls, loaded: LoadedModel, prefix_ids: list[int], settings: RetrievalSettings) -> CacheIdentity:
        ids = np.asarray(prefix_ids, dtype=np.int32)
        template = loaded.tokenizer.chat_template or ""
        return cls(loaded.name, loaded.fingerprint, loaded.tokenizer_fingerprint,
                   hashlib.sha256(template.encode()).hexdigest(), _dtype_name(loaded.dtype),
                   _dtype_name(settings.kv_dtype), LAYOUT_VERSION, hashlib.sha256(ids.tobytes()).hexdigest(),
                   len(prefix_ids), settings.max_train_queries)

    @property
    def cache_id(self) -> str:
        fields = dataclasses.asdict(self)
        del fields["model_name"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def change_from(self, row: dict) -> str:
        """Why a stored cache `row` cannot serve this identity, in a few words ("model changed")."""
        checks = (("layout_version", "cache layout version changed"), ("model_fingerprint", "model changed"),
                  ("template_sha256", "chat template changed"), ("tokenizer_fingerprint", "tokenizer changed"),
                  ("compute_dtype", "dtype changed"), ("kv_dtype", "dtype changed"),
                  ("max_train_queries", "index training settings changed"),
                  ("prefix_sha256", "document prompt changed"))
        for name, reason in checks:
            if row[name] != getattr(self, name):
                return reason
        return "cache entry replaced"


def index_key(cache_id: str, settings: RetrievalSettings) -> dict:
    """What decides an index (`index_identity` hashes it): the cache it indexes and the build-time settings; search-time
    ones (top_k, effort, the budget's share, quantile and cap) excluded. INDEX_VERSION counts changes to what an index's
    files hold."""
    params = dataclasses.asdict(settings.index_params)
    for search_only in ("effort", "threads", "knn_device"):  # do not change what the index is
        params.pop(search_only)
    return {"cache": cache_id, "method": settings.method, "n_sink": settings.n_sink,
            "n_window": settings.n_window, "params": params, "version": INDEX_VERSION}


def index_identity(cache_id: str, settings: RetrievalSettings) -> tuple[str, dict]:
    """(index id, params): the hash of `index_key` and its build params."""
    key = index_key(cache_id, settings)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest(), key["params"]


@dataclass
class LoadResult:
    """What opening a stored cache gave: the cache (None: build it), notices for the user, timings."""

    cache: RetrievalCache | None = None
    notices: list[str] = field(default_factory=list)
    load_s: float = 0.0
    verify_s: float = 0.0
    index_build_s: float = 0.0
    index_loaded: bool = False


def load_cache_steps(store: Store, doc_id: int, identity: CacheIdentity, settings: RetrievalSettings,
                     loaded: LoadedModel, full_hash: bool = True) -> Generator[Progress, None, LoadResult]:
    """Restore the document's cache for `identity` if a valid one is stored (yielding "loading" progress).

    Stale caches of the document (another identity) are deleted with the reason; damaged ones too.
    When the K/V are stored but not the index for these settings, the index is built from the saved
    queries and saved. Returns a LoadResult whose cache is None when the caller must prefill.
    """
    result = LoadResult()
    started = time.perf_counter()
    cache_id = identity.cache_id
    row = store.get_cache(cache_id)
    for other in store.caches_of(doc_id):
        if other["id"] != cache_id and (other["status"] == "ready" or store._writer_dead(other)):
            if other["status"] == "ready" and not result.notices:
                result.notices.append(f"cache rebuilt: {identity.change_from(other)}")
            store.delete_cache(other["id"])
    if row is None or row["status"] != "ready":
        return result
    folder = store.cache_dir(cache_id)
    n_layers = loaded.config.num_hidden_layers
    index_id, _ = index_identity(cache_id, settings)
    index_row = store.get_index(index_id) if settings.method != WINDOW_ONLY else None
    index_ready = index_row is not None and index_row["status"] == "ready"
    try:
        records = {r.name: r for r in store.files(cache_id)}
        if not folder.is_dir():
            raise DamagedFileError("its folder is missing")
        needed_kinds = ("keys", "values") if index_ready or settings.method == WINDOW_ONLY else KV_FILES
        needed = [_record(records, PREFIX_FILE)]
        needed += [_record(records, _layer_file(n, kind)) for n in range(n_layers) for kind in needed_kinds]
        if row["n_layers"] != n_layers or row["prefix_tokens"] != identity.prefix_tokens:
            raise DamagedFileError("its sizes do not match the model and document")
        verify_started = time.perf_counter()
        store.remember_identities(cache_id, verify_files(folder, needed, full_hash))
        result.verify_s = time.perf_counter() - verify_started
        prefix_ids = load_array(folder, records[PREFIX_FILE])
        if prefix_ids.shape != (identity.prefix_tokens,):
            raise DamagedFileError(f"{PREFIX_FILE} does not hold the document's tokens")
        meter = ProgressMeter("loading", n_layers, None, "layers")
        yield meter.update(0)
        prefixes = []
        for number in range(n_layers):
            arrays = {kind: _tensor(load_array(folder, records[_layer_file(number, kind)]))
                      for kind in needed_kinds}
            _check_layer_shapes(arrays, loaded, identity.prefix_tokens, _layer_file(number, "keys"))
            prefixes.append(PrefixArrays(arrays["keys"], arrays["values"], arrays.get("queries")))
            yield meter.update(number + 1)
    except DamagedFileError as error:
        store.delete_cache(cache_id)
        result.notices.append(f"cache rebuilt: damaged cache removed ({error})")
        return result
    index_arrays = None
    if index_ready:
        index_arrays, notice = _load_index(store, cache_id, index_id, n_layers, full_hash)
    build_started = time.perf_counter()
    cache = None
    if index_arrays is not None:
        try:
            cache = RetrievalCache.restore(prefixes, loaded.cache_devices, settings, loaded.dtype, index_arrays,
                                           attention_scale(loaded.model))
        except (KeyError, ValueError, IndexError, TypeError) as error:  # arrays that do not make an index
            store.delete_index(cache_id, index_id)
            index_arrays, notice = None, f"index rebuilt: damaged index removed ({error})"
    if cache is None:
        if index_ready:  # the index was damaged: rebuild it from the saved queries
            result.notices.append(notice)
            prefixes = _with_queries(store, cache_id, folder, records, prefixes, result)
            if prefixes is None:
                store.delete_cache(cache_id)
                return result
        build_started = time.perf_counter()
        cache = RetrievalCache.restore(prefixes, loaded.cache_devices, settings, loaded.dtype, None,
                                       attention_scale(loaded.model))
    result.index_loaded = index_arrays is not None
    if not result.index_loaded and settings.method != WINDOW_ONLY:
        result.index_build_s = cache.index_build_s = cache.index_wait_s = time.perf_counter() - build_started
        try:
            save_index(store, cache_id, cache)
        except StoreError as error:
            result.notices.append(f"index not saved: {error.problem}")
    store.touch("caches", cache_id)
    if index_ready and result.index_loaded:
        store.touch("indexes", index_id)
    result.cache = cache
    result.load_s = time.perf_counter() - started
    return result


def _with_queries(store: Store, cache_id: str, folder, records, prefixes, result) -> list[PrefixArrays] | None:
    """The prefixes with their saved queries added (needed to rebuild a damaged index); None if damaged."""
    try:
        names = [_record(records, _layer_file(n, "queries")) for n in range(len(prefixes))]
        store.remember_identities(cache_id, verify_files(folder, names))
        return [dataclasses.replace(p, queries=_tensor(load_array(folder, r))) for p, r in zip(prefixes, names,
                                                                                             strict=True)]
    except DamagedFileError as error:
        result.notices.append(f"cache rebuilt: damaged cache removed ({error})")
        return None


def _load_index(store: Store, cache_id: str, index_id: str, n_layers: int, full_hash: bool
                ) -> tuple[list[dict[str, np.ndarray]] | None, str | None]:
    """Per-layer index arrays, or (None, notice) when the stored index is damaged (it is deleted)."""
    folder = store.index_dir(cache_id, index_id)
    try:
        records = store.files(index_id)
        if not folder.is_dir():
            raise DamagedFileError("its folder is missing")
        store.remember_identities(index_id, verify_files(folder, records, full_hash))
        arrays: list[dict[str, np.ndarray]] = [{} for _ in range(n_layers)]
        for record in records:
            layer, name = _parse_layer_file(record.name)
            if layer >= n_layers:
                raise DamagedFileError(f"{record.name} names a layer the model does not have")
            arrays[layer][name] = load_array(folder, record)
        return arrays, None
    except DamagedFileError as error:
        store.delete_index(cache_id, index_id)
        return None, f"index rebuilt: damaged index removed ({error})"


def save_cache_steps(store: Store, doc_id: int, identity: CacheIdentity, prefix_ids: list[int],
                     cache: RetrievalCache, cancel: CancelToken | None = None
                     ) -> Generator[Progress, None, list[str]]:
    """Write an indexed cache (and its index) to the store, yielding "saving" progress per layer.

    Returns notices (e.g. what was evicted). Raises StoreError when the disk is full or the cache is
    larger than the budget (the library is then as it was), CancelledError between layers.
    """
    notices: list[str] = []
    cache_id = identity.cache_id
    layers = cache.layers
    needed = sum(npy_bytes(layer.prefix_values.numpy()) * 2 + npy_bytes(layer.train_queries.numpy())
                 for layer in layers)
    evicted = store.make_room(needed, keep=cache_id)
    if evicted:
        notices.append(f"disk budget: removed {len(evicted)} least recently used cache(s)")
    store.check_free_space(needed)
    row = {"id": cache_id, "document_id": doc_id, "n_layers": len(layers), **dataclasses.asdict(identity)}
    claim = store.claim("caches", row)
    if claim != "claimed":
        if claim == "busy":
            notices.append("cache not saved: another Folio process is saving it")
        return notices
    folder = store.cache_dir(cache_id)
    meter = ProgressMeter("saving", len(layers), None, "layers")
    yield meter.update(0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        records = [write_array(folder, PREFIX_FILE, np.asarray(prefix_ids, dtype=np.int32))]
        for number, layer in enumerate(layers):
            if cancel:
                cancel.raise_if_cancelled()
            prefix = layer.prefix_arrays()
            for kind, tensor in (("keys", prefix.keys), ("values", prefix.values), ("queries", prefix.queries)):
                records.append(write_array(folder, _layer_file(number, kind), tensor.numpy()))
            yield meter.update(number + 1)
        sync_folder(folder)
        store.commit_entry("caches", cache_id, records)
    except BaseException as error:
        store.abort_entry("caches", cache_id, folder)
        _raise_write_error(store, error, needed, "cache")
    try:
        save_index(store, cache_id, cache)
    except StoreError as error:
        notices.append(f"index not saved: {error.problem}")
    return notices


def save_index(store: Store, cache_id: str, cache: RetrievalCache) -> None:
    """Write the cache's built indexes as a new index record (nothing for window-only caches)."""
    settings = cache.settings
    if settings.method == WINDOW_ONLY:
        return
    index_id, params = index_identity(cache_id, settings)
    arrays = [layer.index_arrays() for layer in cache.layers]
    needed = sum(npy_bytes(np.asarray(a)) for layer in arrays for a in layer.values())
    store.make_room(needed, keep=cache_id)
    store.check_free_space(needed, "index")
    row = {"id": index_id, "cache_id": cache_id, "method": settings.method, "n_sink": settings.n_sink,
           "n_window": settings.n_window, "params": json.dumps(params, sort_keys=True)}
    if store.claim("indexes", row) != "claimed":
        return
    folder = store.index_dir(cache_id, index_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        records = [write_array(folder, _layer_file(number, name), np.asarray(array))
                   for number, layer in enumerate(arrays) for name, array in layer.items()]
        sync_folder(folder)
        store.commit_entry("indexes", index_id, records)
    except BaseException as error:
        store.abort_entry("indexes", index_id, folder)
        _raise_write_error(store, error, needed, "index")


def _raise_write_error(store: Store, error: BaseException, needed: int, what: str) -> None:
    """Re-raise a failed write (after its files were removed) as a StoreError a user can act on."""
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or getattr(error, "disk_full", False):
        raise disk_full_error(needed, store.free_bytes(), f"saving this document's {what}") from error
    if isinstance(error, OSError):
        raise StoreError(f"The {what} could not be written ({error}); the library is unchanged.",
                         "Check that the data folder is writable.") from error
    raise error


# -- helpers ------------------------------------------------------------------------------------------------
def _layer_file(number: int, name: str) -> str:
    return f"layer_{number:03d}_{name}.npy"


def _parse_layer_file(file_name: str) -> tuple[int, str]:
    try:
        _, number, rest = file_name.split("_", 2)
        return int(number), rest.removesuffix(".npy")
    except ValueError:
        raise DamagedFileError(f"{file_name} is not a layer file") from None


def _record(records: dict[str, FileRecord], name: str) -> FileRecord:
    if name not in records:
        raise DamagedFileError(f"the library has no record of {name}")
    return records[name]


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A torch view of a (copy-on-write, so writable) memory map: no copy, pages read when touched."""
    return torch.from_numpy(array)


def _check_layer_shapes(arrays: dict[str, torch.Tensor], loaded: LoadedModel, tokens: int, name: str) -> None:
    config = loaded.config.get_text_config()
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for kind in ("keys", "values"):
        if tuple(arrays[kind].shape) != (n_kv, tokens, head_dim):
            raise DamagedFileError(f"{name}: shape {tuple(arrays[kind].shape)} does not fit the model "
                                   f"({n_kv}, {tokens}, {head_dim})")
    if "queries" in arrays and arrays["queries"].shape[0] != config.num_attention_heads:
        raise DamagedFileError(f"{name}: queries do not fit the model's heads")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
