"""Engine settings: one frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields

ATTENTION_MODES = ("auto", "full", "retrieval", "window", "exact", "flat", "ivf", "hnsw", "qgraph")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
WEIGHTS = ("full", "8bit", "4bit")  # the weights as stored, or quantized at load (engine.quantize)
CPU_WEIGHTS = ("int8", "full")  # how a CPU holds full weights' linear layers (engine.cpu_weights)
CPU_PREFILL_CHUNK, GPU_PREFILL_CHUNK = 512, 4096
MAX_ANSWER_TOKENS = 32768
# The settings whose change reloads the model (ConfigChange). What a change costs each document (its K/V, its index)
# follows from their identities: engine.change_cost.
RELOAD_MODEL_FIELDS = ("model", "device", "dtype", "weights", "cpu_weights")


@dataclass(frozen=True)
class EngineConfig:
    """What model runs where, how attention is done, and how answers are generated. The one home of these
    defaults: the CLI, the app's settings and the cache's RetrievalSettings take them from here.

    model: "default" (the bundled SmolLM2-135M-Instruct), a catalog id (resources/models.json), a local model
        folder, or a hub id.
    weights: "full" (the model's weights in `dtype`), or "8bit"/"4bit": its linear layers quantized at load
        (engine.quantize), so a larger model fits a smaller card.
    cpu_weights: on a CPU with weights "full", "int8" (the linear layers' weights as 8-bit integers with a float32
        scale per output channel, activations in float32: a quarter of the bytes a decode step reads;
        engine.cpu_weights) or "full" (the weights in `dtype`). Ignored on a GPU, with 8bit/4bit weights and for a
        model split across devices.
        docs/design.md says why int8 is the default.
    attention: "auto" (full attention where it is faster and fits the device, else retrieval: chosen per document
        by engine.attention_mode), "full" (ordinary attention), "retrieval" (RetrievalAttention), "window" (sinks +
        last window only), or "exact"/"flat"/"ivf"/"hnsw" (retrieval with another key index, for comparison).
    n_sink, n_window: the static set kept on the device: first n_sink and last n_window prefix tokens.
    top_k: keys retrieved per query head and decode step from the offloaded set; with attention_share, the least.
    attention_share: the share of each layer's and head's attention the static set and the retrieved keys should
        hold, estimated per head from the document's own prefill queries (engine.index.budget): heads whose
        attention is spread retrieve more keys than top_k. 0 retrieves a fixed top_k; 1 every key. 0.9 by default:
        of the shares measured, the one that matched full attention's answers most often at the fewest keys in the
        freerun suite (docs/design.md).
    search_effort: the index's search knob (graph queue size, HNSW efSearch, IVF nprobe).
    kv_dtype: the dtype of the document's K/V after prefill (CPU memory and disk): float16 or float32.
    prefill_chunk: tokens per prefill step; 0 chooses by device (`prefill_chunk_for`).
    decode_threads: torch's CPU threads while decoding (one token per step: each op is too small to share, and
        sharing costs a barrier per op, far more on a busy machine; docs/benchmarks.md, profile); 0 keeps torch's.
    """

    model: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    weights: str = "full"
    cpu_weights: str = "int8"
    attention: str = "auto"
    n_sink: int = 128
    n_window: int = 512
    top_k: int = 100
    attention_share: float = 0.9
    search_effort: int = 100
    kv_dtype: str = "float16"
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    prefill_chunk: int = 0
    threads: int = 0
    decode_threads: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not self.model.strip():
            problems.append("model must be 'default', a model folder or a hub id")
        if self.attention not in ATTENTION_MODES:
            problems.append(f"attention must be one of {', '.join(ATTENTION_MODES)}, not {self.attention!r}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            problems.append(f"device must be one of {', '.join(DEVICES)} or cuda:N, not {self.device!r}")
        if self.kv_dtype not in ("float16", "float32"):
            problems.append(f"kv_dtype must be float16 or float32, not {self.kv_dtype!r}")
        if self.weights not in WEIGHTS:
            problems.append(f"weights must be one of {', '.join(WEIGHTS)}, not {self.weights!r}")
        if self.cpu_weights not in CPU_WEIGHTS:
            problems.append(f"cpu_weights must be one of {', '.join(CPU_WEIGHTS)}, not {self.cpu_weights!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        for name in ("n_sink", "n_window", "threads", "prefill_chunk", "decode_threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be 0 or more")
        for name in ("top_k", "search_effort", "max_new_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.max_new_tokens > MAX_ANSWER_TOKENS:
            problems.append(f"max_new_tokens must be at most {MAX_ANSWER_TOKENS:,}")
        if not 0 <= self.attention_share <= 1:
            problems.append("attention_share must be between 0 (fixed top-k) and 1 (every key)")
        if self.temperature < 0:
            problems.append("temperature must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if problems:
            raise ValueError("Invalid settings: " + "; ".join(problems) + ".")

    def prefill_chunk_for(self, device_type: str) -> int:
        """prefill_chunk, or where it is 0: 512 tokens on a CPU (prompt cancelling and progress; nothing is copied per
        chunk there), 4,096 on a GPU, where larger chunks keep the device busy and the chunk's transient memory grows
        with chunk x N. Models prefilled chunk by chunk (engine.layer_prefill.supports_layer_major is False) also send
        each layer's whole stored prefix to the device at every chunk: traffic as N^2 / chunk (Llama-3-8B's shape at
        128K: about 283 GB at 4,096, 2.1 TB at 512)."""
        if self.prefill_chunk:
            return self.prefill_chunk
        return CPU_PREFILL_CHUNK if device_type == "cpu" else GPU_PREFILL_CHUNK


@dataclass(frozen=True)
class ConfigChange:
    """Which fields a new EngineConfig changes (`changed`) and whether the model must be reloaded (`reload_model`:
    model, device, dtype, weights or cpu_weights changed). What the change costs each document: engine.change_cost.
    """

    reload_model: bool
    changed: tuple[str, ...]

    @classmethod
    def between(cls, old: EngineConfig, new: EngineConfig) -> ConfigChange:
        changed = tuple(f.name for f in fields(EngineConfig) if getattr(old, f.name) != getattr(new, f.name))
        return cls(reload_model=any(name in RELOAD_MODEL_FIELDS for name in changed), changed=changed)
