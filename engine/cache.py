"""The RetrievalAttention KV cache: a static set on the device, everything else in CPU memory behind
a per-layer key index.

Life of a cache (one document prefix of T tokens):
1. prefill: `update` writes each chunk's K/V into a preallocated CPU store [H_kv, T, D] (pinned when
   the model is on CUDA; in kv_dtype already when that holds the model's values, see `store_dtype`) and
   hands attention the K/V so far; the prefill is exact full attention.
   The attention hook records a sample of each layer's queries for training the index. Only one
   layer's K/V is ever on the device at once.
2. `build_indexes()`: per layer, the first n_sink and last n_window tokens go to the device (the
   static set), the rest stays in CPU memory (offloaded set, contiguous per layer) and gets an index
   built from that layer's recorded queries. CPU memory then holds each layer's K/V once: the offloaded
   keys, the prefix's values (the offloaded values are a view of them) and a small copy of the static keys,
   from which `prefix_arrays()` rebuilds the prefix for saving.
3. decode: tokens after the prefix (question, answer) are appended to the static set; attention is
   exact over the static set on the device, merged by log-sum-exp with exact attention over each
   query head's retrieved keys from the offloaded set (see engine.retrieval): a fixed top_k, or per query head
   the budget that follows the attention (engine.index.budget), calibrated at the index build from the layer's
   recorded queries.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import Cache
from transformers.cache_utils import CacheLayerMixin

from engine.config import EngineConfig
from engine.events import CancelToken, Progress, ProgressMeter
from engine.index import IndexParams, LayerIndex, build_layer_index, load_layer_index
from engine.index.budget import CURVE_ARRAYS, AttentionCurves, attention_curves, calibration_positions
from engine.sizing import training_stride

WINDOW_ONLY = "window"  # no index: the offloaded set is dropped (StreamingLLM)
BUDGET_QUANTILE = 0.9  # of the calibration queries' needs (docs/benchmarks.md, budget)
FLOAT16_MAX = torch.finfo(torch.float16).max


@dataclass(frozen=True)
class RetrievalSettings:
    """method: an index method ("retrieval", "exact", "flat", "ivf", "hnsw") or "window".

    top_k: keys retrieved per query head and decode step; with attention_share, the least any head retrieves.
    attention_share: 0 for a fixed top_k (the default here; the engine's default is EngineConfig's, passed on by
        engine.session.retrieval_settings); else the share of each head's attention the static set and the
        retrieved keys should hold, by the layer's attention curves (engine.index.budget): each query head
        retrieves its budget, the budget_quantile of what its calibration queries needed, between top_k and
        budget_cap (0: every offloaded key). 1 retrieves every key.
    max_train_queries: aim for this many prefill queries per head to train the index, evenly spaced,
        but keep between one in MIN_TRAIN_STRIDE and one in MAX_TRAIN_STRIDE of them (why these bounds:
        docs/benchmarks.md, training queries).
    kv_dtype: the dtype the prefix K/V are kept in after the prefill (in CPU memory and on disk). A layer whose
        keys or values leave float16's range keeps them in float32 instead (`fits_float16`).
    """

    method: str = EngineConfig.attention
    n_sink: int = EngineConfig.n_sink
    n_window: int = EngineConfig.n_window
    top_k: int = EngineConfig.top_k
    effort: int | None = None
    attention_share: float = 0.0  # the cache's own: a fixed top_k (the engine's default: EngineConfig)
    budget_quantile: float = BUDGET_QUANTILE
    budget_cap: int = 0
    index_params: IndexParams = field(default_factory=IndexParams)
    max_train_queries: int = 2048
    kv_dtype: torch.dtype = torch.float16

    def search_only_change(self, other: RetrievalSettings) -> bool:
        """Whether `other` differs from these settings only in what searches use (top_k, effort, the budget), so
        the same indexes serve it (`RetrievalCache.use_search_settings`)."""
        def built(s: RetrievalSettings) -> tuple:
            return (s.method, s.n_sink, s.n_window, dataclasses.replace(s.index_params, effort=0, threads=0),
                    s.max_train_queries, s.kv_dtype)
        return built(self) == built(other)


@dataclass
class PrefixArrays:
    """One layer's document prefix, what is persisted: keys/values [H_kv, T, D] in kv_dtype and the
    sampled prefill queries [H, Nq, D] float16 that train (or retrain) the index."""

    keys: torch.Tensor
    values: torch.Tensor
    queries: torch.Tensor


@dataclass
class SearchStats:
    """Keys scanned and retrieved by index searches, summed over layers, heads and steps."""

    scanned: int = 0
    indexed: int = 0  # keys in the searched indexes, summed the same way
    searches: int = 0
    retrieved: int = 0  # keys retrieved (attended), summed the same way
    search_s: float = 0.0

    @property
    def scanned_fraction(self) -> float:
        return self.scanned / self.indexed if self.indexed else 0.0

    @property
    def retrieved_per_search(self) -> float:
        return self.retrieved / self.searches if self.searches else 0.0


class AttentionTrace:
    """Per decode step, the prefix positions attended (the static set's prefix keys and the retrieved keys) and the
    share of attention they got (engine.retrieval.trace_step).

    Summed over layers and heads; each step keeps its `top` heaviest positions. Feeds citations.
    """

    def __init__(self, prefix_len: int, top: int = 64) -> None:
        self.top = top
        self.steps: list[list[tuple[int, float]]] = []
        self._mass = np.zeros(prefix_len, dtype=np.float32)
        self._open = False

    def add(self, layer_idx: int, positions: np.ndarray, mass: np.ndarray) -> None:
        """positions [n] int prefix positions, mass [n] their attention share (a new step starts at layer 0)."""
        if layer_idx == 0:
            self._close_step()
        np.add.at(self._mass, positions, mass)
        self._open = True

    def take(self) -> list[list[tuple[int, float]]]:
        """The steps recorded so far (and forget them)."""
        self._close_step()
        steps, self.steps = self.steps, []
        return steps

    def _close_step(self) -> None:
        if not self._open:
            return
        top = min(self.top, len(self._mass))
        best = np.argpartition(-self._mass, top - 1)[:top]
        self.steps.append([(int(p), float(self._mass[p])) for p in best if self._mass[p] > 0])
        self._mass.fill(0)
        self._open = False


class RetrievalLayer(CacheLayerMixin):
    """One transformer layer's K/V: prefill store, then static set + offloaded set + index."""

    is_croppable = True

    def __init__(self, prefix_len: int, device: torch.device, settings: RetrievalSettings,
                 dtype: torch.dtype = torch.float32, scale: float | None = None) -> None:
        """scale: the model's attention scale (None: 1/sqrt(head_dim)); the prefill's attention calls set it too."""
        super().__init__()
        self.prefix_len, self.device, self.settings, self.dtype = prefix_len, device, settings, dtype
        self.scale = scale
        self.filled = 0  # prefill: tokens written into the store
        self.indexed = False
        self.train_stride = training_stride(prefix_len, settings.max_train_queries)
        self.kv_dtype = settings.kv_dtype  # float32 for this layer if its K/V leave float16's range (see _widen)
        self._train_queries: list[torch.Tensor] = []
        self.n_static_prefix = 0  # static tokens that belong to the prefix (sinks + window)
        self.n_static = 0  # all static tokens: prefix part + question/answer tail
        self.static_prefix_positions: np.ndarray | None = None  # set by install
        self.off_keys: torch.Tensor | None = None  # [H_kv, N_off, D] kv_dtype, CPU
        self.off_values: torch.Tensor | None = None
        self.index: LayerIndex | None = None
        self.curves: AttentionCurves | None = None  # the calibration queries' attention curves (engine.index.budget)
        self.budget: np.ndarray | None = None  # [H] keys per query head, or None: settings.top_k for every head
        # A layer-major prefill (engine.layer_prefill) on a GPU keeps this layer's prefix K/V [1, H_kv, T, D] on the
        # device during its pass instead of copying the store's prefix there at every chunk.
        self.prefill_on_device = False
        self._live_k: torch.Tensor | None = None
        self._live_v: torch.Tensor | None = None

    # -- transformers' cache layer protocol ---------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        _, n_kv, _, dim = key_states.shape
        pin = self.device.type == "cuda"
        kept = store_dtype(key_states.dtype, self.kv_dtype)
        self.store_k = torch.empty(n_kv, self.prefix_len, dim, dtype=kept, pin_memory=pin)
        self.store_v = torch.empty(n_kv, self.prefix_len, dim, dtype=kept, pin_memory=pin)
        self.dtype = key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """key_states/value_states [1, H_kv, n, D] -> all keys/values attention should see now."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if not self.indexed:
            return self._append_prefill(key_states, value_states)
        return self._append_static(key_states, value_states)

    def get_seq_length(self) -> int:
        return self.prefix_len - self.n_static_prefix + self.n_static if self.indexed else self.filled

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last -tokens_to_remove tokens (transformers' convention: a negative count)."""
        drop = -tokens_to_remove
        if drop <= 0:
            return
        if not self.indexed:
            self.filled = max(0, self.filled - drop)
            return
        if drop > self.n_static - self.n_static_prefix:
            raise ValueError("a retrieval cache can only drop tokens added after the document prefix")
        self.n_static -= drop

    # -- prefill --------------------------------------------------------------------------------------
    def _append_prefill(self, key_states, value_states):
        n = key_states.shape[-2]
        if self.filled + n > self.prefix_len:
            raise ValueError(f"prefill of {self.filled + n} tokens overflows the {self.prefix_len}-token prefix")
        narrowing = self.store_k.dtype == torch.float16 and key_states.dtype != torch.float16
        if narrowing and not fits_float16(key_states, value_states):
            self._widen()
        self.store_k[:, self.filled : self.filled + n] = key_states[0]
        self.store_v[:, self.filled : self.filled + n] = value_states[0]
        self.filled += n
        if self.prefill_on_device:
            return self._append_live(key_states, value_states)
        return (prefix_on(self.store_k, self.filled, key_states.device, key_states.dtype),
                prefix_on(self.store_v, self.filled, value_states.device, value_states.dtype))

    def _append_live(self, key_states, value_states):
        """The layer-major prefill on a device: the chunk's K/V [1, H_kv, n, D] join the prefix kept on the device
        (the store already has its CPU copy); returns views of the prefix so far. After the prefix's last chunk the
        device copy is let go (the views keep it alive until attention is done with them)."""
        if self._live_k is None:
            shape = (1, key_states.shape[1], self.prefix_len, key_states.shape[3])
            self._live_k = key_states.new_empty(shape)
            self._live_v = value_states.new_empty(shape)
        first, n = self.filled - key_states.shape[2], key_states.shape[2]
        self._live_k[:, :, first : first + n] = key_states
        self._live_v[:, :, first : first + n] = value_states
        keys, values = self._live_k[:, :, : self.filled], self._live_v[:, :, : self.filled]
        if self.filled == self.prefix_len:
            self._live_k = self._live_v = None
        return keys, values

    def _widen(self) -> None:
        """A key or value beyond float16's range is coming: keep this layer's K/V in float32 from now on (its store,
        then its offloaded set and saved files), instead of turning it into inf and the answer into NaN. What the
        float16 store holds so far is copied exactly."""
        for name in ("store_k", "store_v"):
            narrow = getattr(self, name)
            wide = torch.empty(narrow.shape, dtype=torch.float32, pin_memory=narrow.is_pinned())
            wide[:, : self.filled] = narrow[:, : self.filled]
            setattr(self, name, wide)
        self.kv_dtype = torch.float32

    def record_queries(self, query: torch.Tensor, scale: float | None = None) -> None:
        """query [H, m, D] of the tokens just prefilled: keep those on the training stride. scale: the attention's
        softmax scale (kept for calibrating the budget)."""
        if scale is not None:
            self.scale = scale
        m = query.shape[1]
        first = self.filled - m
        offset = (-first) % self.train_stride
        if offset < m:
            self._train_queries.append(query[:, offset :: self.train_stride].float().cpu())

    # -- index build ----------------------------------------------------------------------------------
    def build_index(self) -> None:
        """After the prefill: split the prefix into static and offloaded sets and index the offloaded keys."""
        if self.filled != self.prefix_len:
            raise ValueError(f"index build needs the whole prefix ({self.filled} of {self.prefix_len} tokens)")
        if not self._train_queries:
            raise ValueError("no prefill queries were recorded: prefill with the retrieval attention")
        narrowing = self.kv_dtype == torch.float16 and self.store_k.dtype != torch.float16
        if narrowing and not fits_float16(self.store_k, self.store_v):
            self.kv_dtype = torch.float32
        kv_dtype = self.kv_dtype  # the store is already in it wherever it holds the model's values
        prefix = PrefixArrays(self.store_k.to(kv_dtype), self.store_v.to(kv_dtype),
                              torch.cat(self._train_queries, dim=1).to(torch.float16))
        del self.store_k, self.store_v
        self._train_queries = []
        self.install(prefix)

    def install(self, prefix: PrefixArrays, index_arrays: dict[str, np.ndarray] | None = None) -> None:
        """Make the layer ready to decode from a prefix's K/V, freshly prefilled or loaded from disk.

        The K/V are used as given (kv_dtype rounding already applied), so a reopened cache answers
        exactly like the session that made it. index_arrays: a saved index (skips the build).
        """
        s = self.settings
        keys, values = prefix.keys, prefix.values
        n_sink = min(s.n_sink, self.prefix_len)
        window_start = max(n_sink, self.prefix_len - s.n_window)
        model_dtype = self.dtype
        static_k = torch.cat([keys[:, :n_sink], keys[:, window_start:]], dim=1)
        static_v = torch.cat([values[:, :n_sink], values[:, window_start:]], dim=1)
        self.n_static_prefix = self.n_static = static_k.shape[1]
        # the prefix positions of the static set's prefix keys, in its order (the sinks, then the window)
        self.static_prefix_positions = np.concatenate([np.arange(n_sink), np.arange(window_start, self.prefix_len)])
        self.static_k = static_k.to(self.device, model_dtype, copy=True)  # grows with the question and answer
        self.static_v = static_v.to(self.device, model_dtype, copy=True)
        self.off_start = n_sink  # offloaded id i is prefix position off_start + i
        # kv_dtype as stored: the graph index searches float16 keys in place, so no float32 copy is made.
        self.off_keys = keys[:, n_sink:window_start].contiguous()
        self.off_values = values[:, n_sink:window_start]
        # What prefix_arrays() needs besides those: the prefix's keys are not kept whole (that would hold the
        # offloaded keys twice), only the static ones, in kv_dtype and on the CPU (exactly as saved).
        self.static_prefix_k = static_k
        self.prefix_values, self.train_queries = values, prefix.queries
        self.index = self.curves = None
        if self.n_offloaded and s.method != WINDOW_ONLY:
            keys_np = self.off_keys.numpy()
            if index_arrays is not None:
                saved = {name: index_arrays[name] for name in CURVE_ARRAYS if name in index_arrays}
                arrays = {name: a for name, a in index_arrays.items() if name not in CURVE_ARRAYS}
                self.index = load_layer_index(s.method, arrays, keys_np, s.index_params)
                self.curves = AttentionCurves.from_arrays(saved) if saved else None
                if self.curves is not None and self.curves.left_out.shape[0] != self.index.n_heads:
                    raise ValueError("the saved attention curves do not match the index's query heads")
            else:
                queries = np.ascontiguousarray(prefix.queries.float().numpy())
                self.index = build_layer_index(s.method, keys_np, queries, s.index_params)
            if self.curves is None and prefix.queries is not None:
                self.curves = self._calibrate(keys, prefix.queries, n_sink, window_start)
        self.set_budget()
        self.indexed = True

    def _calibrate(self, keys: torch.Tensor, queries: torch.Tensor, off_start: int, off_end: int) -> AttentionCurves:
        """The attention curves of the layer's calibration queries (the recorded prefill queries past the offloaded
        set) over its prefix keys [H_kv, T, D]; queries [H, Nq, D] are the recorded ones, one every train_stride
        positions from position 0."""
        positions = np.arange(queries.shape[1]) * self.train_stride
        chosen = calibration_positions(positions, off_end)
        scale = self.scale if self.scale is not None else keys.shape[-1] ** -0.5
        return attention_curves(queries[:, chosen], positions[chosen], keys, off_start, off_end, scale,
                                self.settings.index_params.knn_device)

    def set_budget(self) -> None:
        """The keys each query head retrieves under the current settings: `budget` [H], or None for a fixed top_k
        (no attention share asked, or no curves to follow)."""
        s = self.settings
        if s.attention_share > 0 and self.curves is not None:
            self.budget = self.curves.budgets(s.attention_share, s.budget_quantile, s.top_k, s.budget_cap)
        else:
            self.budget = None

    def index_arrays(self) -> dict[str, np.ndarray]:
        """What saving the layer's index stores: the index's arrays and the attention curves (none without an
        index)."""
        if self.index is None:
            return {}
        return self.index.to_arrays() | (self.curves.to_arrays() if self.curves is not None else {})

    def search_k(self) -> int | np.ndarray:
        """What to ask the index for: the per-head budget [H], or the fixed top_k."""
        return self.settings.top_k if self.budget is None else self.budget

    def prefix_arrays(self) -> PrefixArrays:
        """The document prefix as installed (what is saved): keys/values [H_kv, T, D] in kv_dtype, queries.
        The keys are put back together from the static and offloaded ones (a copy of one layer's keys)."""
        sinks = self.off_start
        keys = torch.cat([self.static_prefix_k[:, :sinks], self.off_keys, self.static_prefix_k[:, sinks:]], dim=1)
        return PrefixArrays(keys, self.prefix_values, self.train_queries)

    @property
    def n_offloaded(self) -> int:
        return 0 if self.off_keys is None else self.off_keys.shape[1]

    # -- decode ---------------------------------------------------------------------------------------
    def _append_static(self, key_states, value_states):
        n = key_states.shape[-2]
        if self.n_static + n > self.static_k.shape[1]:  # grow the device buffer geometrically
            grow = max(n, self.static_k.shape[1] // 2, 64)
            self.static_k = _grow(self.static_k, self.n_static, grow)
            self.static_v = _grow(self.static_v, self.n_static, grow)
        self.static_k[:, self.n_static : self.n_static + n] = key_states[0]
        self.static_v[:, self.n_static : self.n_static + n] = value_states[0]
        self.n_static += n
        return self.static_k[None, :, : self.n_static], self.static_v[None, :, : self.n_static]


def fits_float16(*tensors: torch.Tensor) -> bool:
    """Whether float16 holds every value of the tensors without overflowing to inf (|x| <= 65,504). bfloat16 and
    float32 reach far beyond; a model whose keys or values do (at any layer) keeps that layer's K/V in float32."""
    for t in tensors:
        if t.numel():
            low, high = torch.aminmax(t)  # no temporary the size of t
            if not (low >= -FLOAT16_MAX and high <= FLOAT16_MAX):
                return False
    return True


def store_dtype(model_dtype: torch.dtype, kv_dtype: torch.dtype) -> torch.dtype:
    """The dtype the prefill store keeps a layer's K/V in: kv_dtype when it holds every value of the model's
    dtype (a 16-bit model's K/V in float16: bfloat16's 7 mantissa bits fit in float16's 10 over float16's normal
    range), so the store becomes the cache's CPU copy with no conversion; else the model's dtype, so a float32
    prefill stays exact and the conversion to kv_dtype happens at the index build."""
    if model_dtype == kv_dtype or (kv_dtype == torch.float16 and model_dtype == torch.bfloat16):
        return kv_dtype
    return model_dtype


def prefix_on(store: torch.Tensor, filled: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """store [H_kv, L, D] in (pinned) CPU memory -> its first `filled` positions as [1, H_kv, filled, D] on device,
    in dtype.

    On the CPU a view where the dtypes agree. Elsewhere one copy per KV head: each head's rows are contiguous in the
    store, so each is a single asynchronous DMA from pinned memory, where a copy of the whole [H_kv, filled, D] slice
    (strided across heads) would first be gathered into pageable memory by the CPU."""
    if device.type == "cpu":
        return store[None, :, :filled].to(dtype)
    out = torch.empty((1, store.shape[0], filled, store.shape[2]), dtype=store.dtype, device=device)
    for head in range(store.shape[0]):
        out[0, head].copy_(store[head, :filled], non_blocking=True)
    return out.to(dtype)


def _grow(buffer: torch.Tensor, used: int, extra: int) -> torch.Tensor:
    """buffer [H_kv, cap, D] -> [H_kv, cap + extra, D] with the first `used` rows kept."""
    bigger = buffer.new_empty(buffer.shape[0], buffer.shape[1] + extra, buffer.shape[2])
    bigger[:, :used] = buffer[:, :used]
    return bigger


class RetrievalCache(Cache):
    """The model-wide cache: one RetrievalLayer per layer, plus search statistics."""

    def __init__(self, n_layers: int, prefix_len: int, device: torch.device | Sequence[torch.device],
                 settings: RetrievalSettings, dtype: torch.dtype = torch.float32, scale: float | None = None) -> None:
        """device: where the static sets live, one device or one per layer (a model split by accelerate keeps each
        layer's static set on its layer's device: LoadedModel.cache_devices). dtype: the model's compute dtype (the
        static set on the device is kept in it); scale: its attention's softmax scale (engine.retrieval.attention_scale;
        None: 1/sqrt(head_dim)), for calibrating the budget."""
        devices = [device] * n_layers if isinstance(device, torch.device) else list(device)
        if len(devices) != n_layers:
            raise ValueError(f"{len(devices)} devices for {n_layers} layers")
        super().__init__(layers=[RetrievalLayer(prefix_len, d, settings, dtype, scale) for d in devices])
        self.settings = settings
        self.prefix_len = prefix_len
        self.stats = SearchStats()
        self.index_build_s = 0.0  # time spent building indexes, summed over layers
        self.index_wait_s = 0.0  # of that, the time the prefill did not hide (all of it unless builds overlap it)
        self.layer_major = None  # engine.layer_prefill.LayerMajorState while a layer-major prefill is under way
        self.trace: AttentionTrace | None = None  # set to record what decoding retrieved (citations)

    @property
    def indexed(self) -> bool:
        return all(layer.indexed for layer in self.layers)

    def nbytes(self) -> int:
        """Bytes of the tensors the layers hold (prefill stores, static and offloaded K/V, training queries), each
        storage counted once however many views share it; the indexes' own arrays are not counted."""
        seen: dict[int, int] = {}
        for layer in self.layers:
            for value in vars(layer).values():
                tensors = value if isinstance(value, list) else [value]
                for tensor in tensors:
                    if isinstance(tensor, torch.Tensor) and tensor.numel():
                        storage = tensor.untyped_storage()
                        seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())

    def build_index_steps(self, cancel: CancelToken | None = None) -> Generator[Progress, None, None]:
        """Build every layer's index, yielding Progress per layer; checks `cancel` between layers."""
        started = time.perf_counter()
        meter = ProgressMeter("index", len(self.layers), None, "layers")
        yield meter.update(0)
        for number, layer in enumerate(self.layers, start=1):
            if cancel:
                cancel.raise_if_cancelled()
            if not layer.indexed:  # a cancelled build resumes where it stopped
                layer.build_index()
            yield meter.update(number)
        elapsed = time.perf_counter() - started
        self.index_build_s += elapsed
        self.index_wait_s += elapsed

    def use_search_settings(self, settings: RetrievalSettings) -> None:
        """Search the built indexes with `settings` from now on: another top_k, effort or budget. Raises ValueError
        where the settings would need other indexes (`RetrievalSettings.search_only_change`)."""
        if not self.settings.search_only_change(settings):
            raise ValueError("these settings need other indexes: make a new cache")
        self.settings = settings
        for layer in self.layers:
            layer.settings = settings
            if layer.indexed:
                layer.set_budget()

    @classmethod
    def restore(cls, prefixes: list[PrefixArrays], device: torch.device | Sequence[torch.device],
                settings: RetrievalSettings, dtype: torch.dtype,
                index_arrays: list[dict[str, np.ndarray]] | None = None, scale: float | None = None) -> RetrievalCache:
        """A ready-to-decode cache from saved per-layer prefixes (and indexes with their attention curves, when they
        match settings); device and scale as in __init__."""
        prefix_len = prefixes[0].keys.shape[1]
        cache = cls(len(prefixes), prefix_len, device, settings, dtype, scale)
        for number, (layer, prefix) in enumerate(zip(cache.layers, prefixes, strict=True)):
            layer.filled = prefix_len
            layer.is_initialized = True
            layer.install(prefix, index_arrays[number] if index_arrays else None)
        return cache
