"""How much of a document the engine holds at once, and the fit check done before any heavy work on a document:
context, RAM, device memory and disk. Plain arithmetic (no torch), shared by the engine and the app.

The shape constants of the graph index and of the retrieval budget's curves live here because their memory is counted
here: engine.index uses them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from engine import memory
from engine.errors import ContextTooLongError
from engine.units import format_bytes

MIN_TRAIN_STRIDE, MAX_TRAIN_STRIDE = 8, 16
KNN_CHUNK = 1024  # queries (or keys) per matmul chunk in the graph build's exact top-k
KNN_SCORE_BYTES = 256 * 2**20  # ... fewer where a chunk's [rows, N] float32 scores would exceed this
GRAPH_DEGREE = 16  # the graph index's out-degree after pruning (IndexParams.degree)
GRAPH_OVERFLOW_SLACK = 2  # a node's list may grow to this x degree (reverse edges) before it is re-pruned
NEIGHBOUR_ID_BYTES = 4  # neighbour ids are int32
CALIBRATION_QUERIES = 64  # the retrieval budget's calibration queries per query head (engine.index.budget)
GRID_STEPS_PER_DOUBLING = 4  # its attention curves' grid: k grows by 2^(1/4) (about 19%) a step
# How bitsandbytes stores 4-bit weights (engine.quantize): NF4 in blocks of 64, the blocks' scales quantized again
# in groups of 256; each layer keeps its code tables (16 + 256 float32) and an offset.
NF4_BLOCK, NF4_BLOCKS_PER_SCALE = 64, 256
NF4_TABLE_BYTES = 4 * (16 + 256 + 1)
CUDA_CONTEXT_BYTES = 512 * 2**20  # what a card holds for the CUDA context besides torch's allocations (card tables)
# No token covers more characters of a text than the longest vocabulary entry, within this factor (normalizers such
# as NFKC or accent stripping can shorten a text before it is split): what bounds a text's tokens from below.
NORMALIZER_MARGIN = 4


@functools.lru_cache(maxsize=8)
def longest_token_chars(tokenizer) -> int:
    """The characters of the tokenizer's longest vocabulary entry (byte-level and byte-fallback entries are at least
    as long as the text they stand for)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


def check_text_length(text: str, tokenizer, max_positions: int, reserved: int) -> None:
    """Raise ContextTooLongError when `text` cannot fit a context of `max_positions` (with `reserved` answer tokens)
    from its length alone: at least len(text) / (NORMALIZER_MARGIN x longest token) tokens. Done before tokenizing, so
    a text far too long (megabytes against a few thousand tokens) is refused at once instead of after seconds of
    tokenizing and gigabytes of memory. Never refuses a text that fits. A text too short to be refused with any
    vocabulary is passed without reading the vocabulary (tens of milliseconds on a reopen)."""
    if not max_positions or len(text) // NORMALIZER_MARGIN + reserved <= max_positions:
        return
    fewest = len(text) // (NORMALIZER_MARGIN * max(longest_token_chars(tokenizer), 1))
    if fewest + reserved > max_positions:
        raise ContextTooLongError(fewest + reserved, max_positions, fewest, reserved, characters=len(text))


def graph_bytes_per_key(degree: int = GRAPH_DEGREE) -> int:
    """The most bytes of neighbour ids one key holds in a graph index (its list at its longest)."""
    return degree * GRAPH_OVERFLOW_SLACK * NEIGHBOUR_ID_BYTES


def attention_curve_bytes(layers: int, query_heads: int, n_keys: int) -> int:
    """The bytes of a document's attention curves (engine.index.budget), stored with its index: float32 per layer,
    query head, calibration query and grid point (0, the grid's steps below n_keys, n_keys)."""
    points = math.ceil(math.log2(max(n_keys, 1)) * GRID_STEPS_PER_DOUBLING) + 2
    return layers * query_heads * CALIBRATION_QUERIES * points * 4


def training_stride(prefix_len: int, target: int = 2048) -> int:
    """Every how many prefill queries one trains the index (see RetrievalSettings.max_train_queries)."""
    return min(MAX_TRAIN_STRIDE, max(MIN_TRAIN_STRIDE, math.ceil(prefix_len / target)))


def training_queries_per_head(prefix_len: int, target: int = 2048) -> int:
    """How many prefill queries per query head a prefix of prefix_len tokens keeps to train its index."""
    return math.ceil(prefix_len / training_stride(prefix_len, target))


def knn_chunk_rows(n_keys: int) -> int:
    """Queries per chunk of an exact top-k over n_keys keys: KNN_CHUNK, fewer when their scores would pass
    KNN_SCORE_BYTES (at 128K keys: 512 rows, 256 MiB)."""
    return max(1, min(KNN_CHUNK, KNN_SCORE_BYTES // (4 * max(n_keys, 1))))


def device_knn_bytes(n_keys: int, n_queries: int, dim: int) -> int:
    """The device memory one exact top-k of the graph build holds: keys [N, D] and queries [n, D] in float32 and
    one chunk of scores. On a GPU host the builds run these one at a time (engine.index.knn.nearest_keys), so
    this is all the index builds add to the prefill's device memory."""
    return 4 * dim * (n_keys + n_queries) + 4 * knn_chunk_rows(n_keys) * n_keys


@dataclass(frozen=True)
class ModelShape:
    """What the cache size depends on."""

    layers: int
    kv_heads: int
    query_heads: int
    head_dim: int
    max_positions: int
    weight_bytes_per_value: int = 4  # model dtype on the device
    kv_bytes_per_value: int = 2  # kv_dtype of the offloaded document K/V
    hidden_size: int = 0  # 0: query_heads x head_dim (as in the Llama family)
    # What the weights' memory depends on (weights_bytes); 0 where unknown.
    intermediate_size: int = 0
    vocab_size: int = 0
    tied_embeddings: bool = True
    qkv_bias: bool = False

    @property
    def width(self) -> int:
        return self.hidden_size or self.query_heads * self.head_dim


def parameter_split(shape: ModelShape) -> tuple[int, int]:
    """(weights of the decoder layers' linear projections, every other parameter) of a Llama-family model: the first
    are what 8-bit and 4-bit loading quantize; embeddings, output head, norms and biases are the rest."""
    if not (shape.intermediate_size and shape.vocab_size):
        raise ValueError("the model's intermediate size and vocabulary are needed to count its weights")
    width, attention_width = shape.width, shape.query_heads * shape.head_dim
    kv_width = shape.kv_heads * shape.head_dim
    per_layer = 2 * width * attention_width + 2 * width * kv_width + 3 * width * shape.intermediate_size
    embeddings = shape.vocab_size * width * (1 if shape.tied_embeddings else 2)
    biases = shape.layers * (attention_width + 2 * kv_width) if shape.qkv_bias else 0
    return shape.layers * per_layer, embeddings + biases + (2 * shape.layers + 1) * width


def weights_bytes(shape: ModelShape, weights: str = "full", dtype_bytes: int = 2) -> int:
    """The memory a model's weights take when loaded: "full" (every parameter in a dtype of dtype_bytes) or "8bit"/
    "4bit" (engine.quantize: the layers' linear weights quantized as bitsandbytes stores them, the rest in the dtype).
    8-bit: one byte per weight and one float32 scale per output row. 4-bit (NF4, double-quantized scales): half a
    byte per weight, one int8 scale per block of 64, one float32 per 256 blocks, and the code tables."""
    linear, rest = parameter_split(shape)
    if weights == "full":
        return (linear + rest) * dtype_bytes
    width, attention, kv = shape.width, shape.query_heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_layer = 0
    for rows, columns in ((attention, width), (kv, width), (kv, width), (width, attention),
                          (shape.intermediate_size, width), (shape.intermediate_size, width),
                          (width, shape.intermediate_size)):  # q, k, v, o, gate, up, down: (out, in)
        count = rows * columns
        if weights == "8bit":
            per_layer += count + 4 * rows
        else:
            blocks = math.ceil(count / NF4_BLOCK)
            per_layer += math.ceil(count / 2) + blocks + 4 * math.ceil(blocks / NF4_BLOCKS_PER_SCALE) \
                + NF4_TABLE_BYTES
    return shape.layers * per_layer + rest * dtype_bytes


@dataclass(frozen=True)
class FitReport:
    tokens: int
    context: int
    reserved: int  # answer tokens kept free
    ram_bytes: int
    device_bytes: int
    disk_bytes: int
    device_is_cpu: bool
    problems: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        context = f"{self.tokens:,} tokens of {self.context:,} context" if self.context else f"{self.tokens:,} tokens"
        memory = f"≈ {format_bytes(self.ram_bytes)} RAM"
        if not self.device_is_cpu:
            memory += f", {format_bytes(self.device_bytes)} device memory"
        return f"{context} · cache {memory}, {format_bytes(self.disk_bytes)} disk"


def estimate_fit(shape: ModelShape, tokens: int, reserved: int, attention: str, n_sink: int, n_window: int,
                 device_is_cpu: bool, data_folder: str | Path, disk_budget_bytes: int,
                 used_disk_bytes: int = 0, available_ram: int | None = None,
                 available_device: int | None = None) -> FitReport:
    """Estimate what a document of `tokens` tokens costs, and whether it fits."""
    per_token_kv = 2 * shape.layers * shape.kv_heads * shape.head_dim  # K and V values per token
    document_kv = per_token_kv * tokens * shape.kv_bytes_per_value
    queries_per_head = training_queries_per_head(tokens)  # kept in float16 to train (and retrain) the index
    train_queries = shape.layers * shape.query_heads * queries_per_head * shape.head_dim * 2
    # one graph per KV head (IndexParams.graph_per_kv_head), each key's neighbour list at its longest
    index = 0
    if attention not in ("full", "window"):
        index = (shape.layers * shape.kv_heads * tokens * graph_bytes_per_key()
                 + attention_curve_bytes(shape.layers, shape.query_heads, tokens))
    if attention == "full":
        on_device = per_token_kv * (tokens + reserved) * shape.weight_bytes_per_value
        ram = on_device if device_is_cpu else 0
        disk = document_kv
    else:
        static = min(tokens, n_sink + n_window) + reserved
        static_bytes = per_token_kv * static * shape.weight_bytes_per_value
        # The layer-by-layer prefill (engine.layer_prefill) keeps every token's hidden state on the device between
        # layers, and on a GPU also the K/V of the layer it runs.
        hidden = tokens * (shape.hidden_size or shape.query_heads * shape.head_dim) * shape.weight_bytes_per_value
        layer_kv = per_token_kv // shape.layers * tokens * shape.weight_bytes_per_value
        # Meanwhile a GPU host builds finished layers' graphs, their exact top-k searches on the device one at a time:
        # the largest is a graph's training queries (its query heads') against the keys.
        group = shape.query_heads // max(shape.kv_heads, 1)
        build = device_knn_bytes(tokens, group * queries_per_head, shape.head_dim) if attention == "retrieval" else 0
        on_device = max(static_bytes, hidden + (0 if device_is_cpu else layer_kv + build))
        # The prefill store holds the K/V in the model's dtype (float16 for a 16-bit model: engine.cache.store_dtype);
        # after the build the cache holds them once in kv_dtype, beside the index.
        prefill_store = per_token_kv * tokens * shape.weight_bytes_per_value
        in_prefill = prefill_store + (hidden if device_is_cpu else 0)
        ram = max(in_prefill, document_kv + index) + train_queries + (static_bytes if device_is_cpu else 0)
        disk = document_kv + index + train_queries
    problems: list[str] = []
    warnings: list[str] = []
    if shape.max_positions and tokens + reserved > shape.max_positions:
        problems.append(f"This document has {tokens:,} tokens; with {reserved:,} kept for the answer it needs "
                        f"{tokens + reserved:,}, but the model handles at most {shape.max_positions:,}. "
                        "Use a shorter document, lower the answer length, or choose a model with a longer context.")
    available_ram = available_ram if available_ram is not None else memory.available_ram()
    if available_ram and ram > available_ram:
        problems.append(f"Its cache needs ≈ {format_bytes(ram)} of RAM but only {format_bytes(available_ram)} "
                        "is free. Close other programs or use a shorter document.")
    if available_device and not device_is_cpu and on_device > available_device:
        problems.append(f"It needs ≈ {format_bytes(on_device)} of device memory but only "
                        f"{format_bytes(available_device)} is free.")
    free_disk = memory.free_disk(data_folder)
    if free_disk is not None and disk > free_disk:
        warnings.append(f"The cache (≈ {format_bytes(disk)}) does not fit on the disk ({format_bytes(free_disk)} "
                        "free): it will be kept in memory only.")
    elif used_disk_bytes + disk > disk_budget_bytes:
        warnings.append(f"Keeping this cache would exceed the disk budget ({format_bytes(disk_budget_bytes)}): "
                        "delete documents from the library or raise the budget in Settings.")
    return FitReport(tokens, shape.max_positions, reserved, ram, on_device, disk, device_is_cpu,
                     tuple(problems), tuple(warnings))


@dataclass(frozen=True)
class Machine:
    """What a model's fit is checked against: where it runs and what is free there (bytes)."""

    device: str = "cpu"  # "cpu" or "cuda"
    device_bytes: int = 0  # free memory of the card (0 on the CPU)
    ram_bytes: int = 0  # available RAM (0: unknown, not checked)
    disk_bytes: int | None = None  # free disk where models are downloaded (None: unknown, not checked)
    name: str = ""  # e.g. "NVIDIA GeForce RTX 4070 (12.0 GiB)"


@dataclass(frozen=True)
class ModelFit:
    """Whether a model runs a document of `tokens` tokens on a machine with its weights as `weights`."""

    weights: str
    tokens: int
    weights_bytes: int
    device_bytes: int  # the weights and the cache's device part (0 on the CPU)
    ram_bytes: int  # the cache's CPU part (and the weights, on the CPU)
    download_bytes: int  # still to download (0 when installed)
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        return not self.problems


def model_fit(shape: ModelShape, weights: str, tokens: int, machine: Machine, download_bytes: int = 0,
              dtype_bytes: int = 2, reserved: int = 512, attention: str = "retrieval", n_sink: int = 128,
              n_window: int = 512) -> ModelFit:
    """The fit check of a model before it is chosen: its weights (in precision `weights`, engine.quantize) and the
    cache of a `tokens`-token document (estimate_fit) against the machine's device memory, RAM and disk (download)."""
    weights_size = weights_bytes(shape, weights, dtype_bytes)
    on_cpu = machine.device == "cpu"
    cache_shape = dataclasses.replace(shape, weight_bytes_per_value=dtype_bytes)
    cache = estimate_fit(cache_shape, tokens, reserved, attention, n_sink, n_window, on_cpu, ".", 1 << 62,
                         available_ram=0, available_device=0)
    device = 0 if on_cpu else weights_size + cache.device_bytes
    ram = cache.ram_bytes + (weights_size if on_cpu else 0)
    problems = list(cache.problems)
    if not on_cpu and device > machine.device_bytes:
        problems.append(f"needs ≈ {format_bytes(device)} of device memory at {tokens:,} tokens "
                        f"({format_bytes(weights_size)} of weights); {format_bytes(machine.device_bytes)} is free")
    if machine.ram_bytes and ram > machine.ram_bytes:
        problems.append(f"needs ≈ {format_bytes(ram)} of RAM at {tokens:,} tokens; "
                        f"{format_bytes(machine.ram_bytes)} is available")
    if machine.disk_bytes is not None and download_bytes > machine.disk_bytes:
        problems.append(f"its download ({format_bytes(download_bytes)}) needs more than the "
                        f"{format_bytes(machine.disk_bytes)} free on the disk")
    return ModelFit(weights, tokens, weights_size, device, ram, download_bytes, tuple(problems))
