"""decode: time of one decode step's attention (one layer) per method, at equal recall@100.

One step = H query heads x 1 query over a static set (first 128 + last 512 tokens) and an offloaded
set of the other N - 640 keys, top_k = 100:
- full: exact attention over all N keys (partial_attention);
- flat, ivf, hnsw, exact, retrieval: index.search over the offloaded keys, then what a CPU decode step runs
  (decode_attention_cpu): attention over the static set and over the ids found, merged, in one compiled pass.
Each index method runs at the smallest effort of its sweep whose recall@100 (against the exact
inner-product top-100, over the last 64 positions' queries) reaches --target-recall, so the step
times compare at (about) equal recall. attn_err = mean ||o - o_full|| / ||o_full|| of those queries.

Vectors (--vectors):
- real: post-RoPE q/k of one layer of the default model, captured on English text (pydoc topics),
  up to 8192 tokens (the model's positions). Longer N is synthesised by RoPE-shifted tiling of
  --segments distinct captured 8192-token segments: each tile (a segment without its own first 128
  tokens, its start-of-text sinks) is placed at its later position by rotating its keys and queries
  with the model's RoPE (R(a) R(b) = R(a + b), so q·k then depends on the tiled relative position as a
  real prefill's would, given the same hidden states). The document ends on a whole tile of segment 0,
  so the test queries keep their real recent context; earlier tiles cycle backwards over the segments
  (repeating when N needs more than --segments tiles); a head piece of another segment's first tokens
  fills the start. Values are random normal (they affect neither the timing nor the recall).
- prefill: one prefill of the first max(--tokens) tokens of the index suite's document by --model, layer
  --layer, no tiling; each N uses the vectors of the first N tokens (a causal prefill's prefix). For real
  long vectors: gemma3-270m (32K positions), with --rope-scale 4 to reach 128K.
- synthetic: clustered Gaussian keys with a common offset and queries aimed at clusters (for other
  shapes, e.g. Llama-3-8B's --heads 32 --kv-heads 8 --dim 128); for timing, recall is still measured.

    python -m engine.bench decode [--tokens 8192,32768,131072] [--layer 15] [--segments 4]
                               [--vectors real|prefill|synthetic] [--vectors-cache DIR] [--json-out F]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.attention import partial_attention
from engine.bench.index_suite import recall_at_k
from engine.bench.report import Report
from engine.cpu_decode import decode_attention_cpu
from engine.index import IndexParams, LayerIndex, build_layer_index
from engine.index.exact import exact_topk
from engine.sizing import training_stride

N_SINK, N_WINDOW, N_TEST, TOP_K = 128, 512, 64, 100
SEGMENT = 8192  # tokens per captured segment: the default model's max positions
METHODS = ("full", "flat", "ivf", "hnsw", "exact", "retrieval", "qgraph")
INDEX_METHODS = ("flat", "ivf", "hnsw", "exact", "retrieval", "qgraph")
_GRID = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]
EFFORTS: dict[str, list[int | None]] = {  # about x1.5 steps, so the chosen effort is close to the target
    "retrieval": list(_GRID),
    "qgraph": list(_GRID),
    "hnsw": list(_GRID),
    "ivf": [1, 2, 3, 4, 6, 8, 12, *_GRID],
    "flat": [None],
    "exact": [None],
}
EFFORT_NAME = {"retrieval": "queue", "qgraph": "queue", "hnsw": "efSearch", "ivf": "nprobe"}
RATIO_BASES = ("full", "flat", "ivf", "retrieval")
NOT_REACHED = "target never reached: largest effort"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", default="8192,32768,131072", help="comma list of N (context tokens)")
    parser.add_argument("--methods", default=",".join(METHODS[:-1]),
                        help="comma list of " + ",".join(METHODS) + "; qgraph:S sets the compressed graph's slack S "
                        "(1: the exact graph's results; below: fewer exact q·k)")
    parser.add_argument("--vectors", choices=("real", "prefill", "synthetic"), default="real",
                        help="real: RoPE-tiled 8K captures; prefill: one untiled prefill of max(--tokens)")
    parser.add_argument("--layer", type=int, default=15, help="real vectors: layer of the default model (15)")
    parser.add_argument("--segments", type=int, default=4,
                        help="real vectors beyond 8192 tokens: at most this many distinct 8192-token text "
                        "segments are captured and tiled (4)")
    parser.add_argument("--vectors-cache", metavar="DIR", help="folder to keep captured vectors in and reuse them from")
    parser.add_argument("--model", default="default",
                        help="model for real vectors (default: the bundled one; gemma3-270m: 32K context)")
    parser.add_argument("--rope-scale", type=float, default=1.0,
                        help="prefill vectors: stretch the model's RoPE linearly by this factor "
                        "(4: gemma3-270m at 128K)")
    parser.add_argument("--heads", type=int, help="synthetic: query heads (default 9; Llama-3-8B: 32)")
    parser.add_argument("--kv-heads", type=int, help="synthetic: KV heads (default 3; Llama-3-8B: 8)")
    parser.add_argument("--dim", type=int, help="synthetic: head dim (default 64; Llama-3-8B: 128)")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--train-queries", type=int, default=0,
                        help="training queries per head, evenly spaced (default 0: as many as RetrievalCache keeps)")
    parser.add_argument("--steps", type=int, default=N_TEST, help=f"decode steps timed per repeat (<= {N_TEST})")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median step kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (attention, exact top-k)")
    parser.add_argument("--index-threads", type=int, default=1,
                        help="faiss/graph threads for build and search (IndexParams.threads; 1 = serial)")
    parser.add_argument("--kv-dtype", choices=("float16", "float32"), default="float16",
                        help="dtype the offloaded K/V are held in (the cache's kv_dtype; default float16)")
    parser.add_argument("--seed", type=int, default=0)


# ----------------------------------------------------------------------------- vectors


@dataclass
class Segment:
    """One layer's captured vectors of one text segment: queries [H, T, D], keys [H_kv, T, D]."""

    queries: np.ndarray
    keys: np.ndarray


@dataclass
class Workload:
    """What one layer's decode step sees, float32 tensors.

    static_k/v [H_kv, S, D] (first n_sink + last n_window), off_k/v [H_kv, N_off, D] (the rest),
    all_k/v [H_kv, N, D] (in position order), test [H, m, D] decode queries, train [H, Nq, D] prefill
    queries for attention-aware indexes, truth [H, m, 100] exact top-100 ids into off_k.
    """

    static_k: torch.Tensor
    static_v: torch.Tensor
    off_k: torch.Tensor
    off_v: torch.Tensor
    all_k: torch.Tensor
    all_v: torch.Tensor
    test: torch.Tensor
    train: torch.Tensor
    truth: np.ndarray
    source: str

    @property
    def n_tokens(self) -> int:
        return self.all_k.shape[1]

    @property
    def scale(self) -> float:
        return self.test.shape[-1] ** -0.5


def rope_shift(x: np.ndarray, shift: int, inv_freq: np.ndarray) -> np.ndarray:
    """Rotate post-RoPE vectors x [..., D] as if they sat `shift` positions later (Llama rotate_half layout:
    dims i and i + D/2 form a pair turning at inv_freq[i], inv_freq [D/2])."""
    if shift == 0:
        return x
    angle = float(shift) * inv_freq.astype(np.float64)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@dataclass(frozen=True)
class Piece:
    """Tokens local[start:end] of segment `segment`, placed at global position `at`."""

    segment: int
    start: int
    end: int
    at: int


def tile_plan(n_tokens: int, segment_len: int, n_segments: int) -> list[Piece]:
    """Cover n_tokens positions with pieces of captured segments.

    Up to segment_len tokens: segment 0 as captured. Beyond: whole tiles of segments without their first
    N_SINK tokens (their own start-of-text sinks), the last tile being segment 0 so that the test queries
    see their real recent context; tiles cycle backwards over the segments; a head piece (another
    segment's first tokens, N_SINK < length <= segment_len) fills the start of the document.
    """
    if n_tokens <= segment_len:
        return [Piece(0, 0, n_tokens, 0)]
    body = segment_len - N_SINK
    n_tiles = math.ceil((n_tokens - segment_len) / body)
    head_len = n_tokens - n_tiles * body
    head_segment = n_tiles % n_segments if n_tiles % n_segments or n_segments == 1 else 1
    pieces = [Piece(head_segment, 0, head_len, 0)]
    for j in range(1, n_tiles + 1):
        pieces.append(Piece((n_tiles - j) % n_segments, N_SINK, segment_len, head_len + (j - 1) * body))
    return pieces


def evenly_spaced(n_positions: int, count: int) -> np.ndarray:
    """[<= count] int64 positions 0, s, 2s, ... below n_positions with s = ceil(n_positions / count)."""
    stride = max(1, math.ceil(n_positions / max(count, 1)))
    return np.arange(0, n_positions, stride, dtype=np.int64)


def tile_vectors(segments: list[Segment], n_tokens: int, inv_freq: np.ndarray, n_train: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RoPE-shifted tiling of captured segments to n_tokens positions.

    Returns keys [H_kv, N, D], train queries [H, Nq, D] (evenly spaced before the last N_TEST positions)
    and test queries [H, N_TEST, D] (the last N_TEST positions).
    """
    seg_len = segments[0].keys.shape[1]
    keys, train, test = [], [], []
    train_pos = evenly_spaced(n_tokens - N_TEST, n_train)
    test_pos = np.arange(n_tokens - N_TEST, n_tokens)
    for piece in tile_plan(n_tokens, seg_len, len(segments)):
        seg, shift = segments[piece.segment], piece.at - piece.start  # local position = global - shift
        keys.append(rope_shift(seg.keys[:, piece.start : piece.end], shift, inv_freq))
        for out, positions in ((train, train_pos), (test, test_pos)):
            inside = positions[(positions >= piece.at) & (positions < piece.at + piece.end - piece.start)]
            if len(inside):
                out.append(rope_shift(seg.queries[:, inside - shift], shift, inv_freq))
    return np.concatenate(keys, axis=1), np.concatenate(train, axis=1), np.concatenate(test, axis=1)


def capture_segments(model_spec: str, layer: int, n_segments: int, segment_len: int
                     ) -> tuple[list[Segment], np.ndarray]:
    """Prefill n_segments consecutive segment_len-token pieces of english_text() with the model cut after
    `layer`; return their layer's vectors and the model's RoPE inv_freq [D/2]."""
    from engine.bench.gemma import resolve_bench_model
    from engine.bench.haystack import english_text
    from engine.bench.vectors import capture_qk
    from engine.model import load_model

    loaded = load_model(resolve_bench_model(model_spec), device="cpu", dtype="float32")
    ids = loaded.tokenizer(english_text(), add_special_tokens=False, return_tensors="pt").input_ids[0]
    if len(ids) < n_segments * segment_len:
        raise SystemExit(f"the text has {len(ids)} tokens: too few for {n_segments} x {segment_len}")
    inner = loaded.model.model
    all_layers = inner.layers
    inner.layers = torch.nn.ModuleList(list(all_layers)[: layer + 1])  # later layers are not needed
    try:
        segments = []
        for s in range(n_segments):
            started = time.perf_counter()
            captured = capture_qk(loaded.model, ids[s * segment_len : (s + 1) * segment_len], layers=[layer])[layer]
            segments.append(Segment(captured.queries, captured.keys))
            print(f"  captured segment {s + 1}/{n_segments} ({segment_len} tokens, layers 0..{layer}) "
                  f"in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        inner.layers = all_layers
    rotary = inner.rotary_emb  # Gemma 3 keeps one inv_freq per layer type
    inv_freq = getattr(rotary, "inv_freq", getattr(rotary, "full_attention_inv_freq", None)).double().numpy()
    return segments, inv_freq


def load_real_segments(args: argparse.Namespace, n_segments: int, segment_len: int
                       ) -> tuple[list[Segment], np.ndarray]:
    """capture_segments, through the --vectors-cache file when given."""
    path = None
    if args.vectors_cache:
        name = f"segments-{Path(args.model).name}-l{args.layer}-s{n_segments}x{segment_len}.npz"
        path = Path(args.vectors_cache) / name
    tag = np.array([args.layer, n_segments, segment_len])
    if path and path.exists():
        data = np.load(path)
        if np.array_equal(data["tag"], tag) and str(data["model"]) == args.model:
            n = int(data["tag"][1])
            return [Segment(data[f"q{i}"], data[f"k{i}"]) for i in range(n)], data["inv_freq"]
        print(f"  {path} holds another capture: capturing again", flush=True)
    segments, inv_freq = capture_segments(args.model, args.layer, n_segments, segment_len)
    if path:
        arrays = {f"q{i}": s.queries for i, s in enumerate(segments)} | {
            f"k{i}": s.keys for i, s in enumerate(segments)}
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".tmp"), "wb") as handle:
            np.savez(handle, tag=tag, model=np.array(args.model), inv_freq=inv_freq, **arrays)
        path.with_name(path.name + ".tmp").replace(path)
    return segments, inv_freq


def load_prefill(args: argparse.Namespace, n_tokens: int) -> tuple[list[Segment], np.ndarray]:
    """Layer --layer of one prefill of n_tokens (prefill_vectors, through --vectors-cache), as one segment."""
    from engine.bench.index_suite import index_text
    from engine.bench.vectors import prefill_vectors

    print(f"prefill of {n_tokens} tokens with {args.model} (RoPE x{args.rope_scale:g}) ...", flush=True)
    capture = prefill_vectors(args.model, index_text(), n_tokens, [args.layer], args.rope_scale,
                              Path(args.vectors_cache) if args.vectors_cache else None)
    vectors = capture.layers[args.layer]
    if vectors.keys.shape[1] != vectors.queries.shape[1]:
        raise SystemExit(f"layer {args.layer} keeps {vectors.keys.shape[1]} of {vectors.queries.shape[1]} keys "
                         "(a sliding-window layer): choose a full-attention layer")
    if vectors.keys.shape[1] < n_tokens:
        raise SystemExit(f"the document has {vectors.keys.shape[1]} tokens: fewer than {n_tokens}")
    return [Segment(np.asarray(vectors.queries), np.asarray(vectors.keys))], np.zeros(1)


def synthetic_vectors(n_tokens: int, heads: int, kv_heads: int, dim: int, n_train: int, seed: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered keys [H_kv, N, D] (common offset + one of N/64 cluster centres + noise) and queries aimed
    at random clusters against the offset (negative mean cosine, as real decode queries): train
    [H, Nq, D], test [H, N_TEST, D]."""
    rng = np.random.default_rng(seed)
    group = heads // kv_heads
    n_clusters = max(1, n_tokens // 64)
    keys = np.empty((kv_heads, n_tokens, dim), dtype=np.float32)
    queries = np.empty((heads, n_train + N_TEST, dim), dtype=np.float32)
    for g in range(kv_heads):
        offset = 2.0 * rng.standard_normal(dim, dtype=np.float32)
        centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
        keys[g] = offset + centres[rng.integers(n_clusters, size=n_tokens)]
        keys[g] += 0.5 * rng.standard_normal((n_tokens, dim), dtype=np.float32)
        for h in range(g * group, (g + 1) * group):
            aim = centres[rng.integers(n_clusters, size=n_train + N_TEST)]
            noise = rng.standard_normal((n_train + N_TEST, dim), dtype=np.float32)
            queries[h] = 2.0 * aim - 0.5 * offset + 0.7 * noise
    return keys, queries[:, :n_train], queries[:, n_train:]


def make_workload(keys: np.ndarray, train: np.ndarray, test: np.ndarray, source: str, seed: int,
                  kv_dtype: torch.dtype = torch.float16) -> Workload:
    """keys [H_kv, N, D] in position order, train [H, Nq, D], test [H, m, D] -> the split Workload.

    The offloaded K/V are held in kv_dtype, as the cache holds them (the indexes search those keys: the graph in
    place, the faiss baselines from their own float32 copies); full attention keeps float32, its fastest form.
    """
    n_kv, n, dim = keys.shape
    if n <= N_SINK + N_WINDOW:
        raise SystemExit(f"need more than {N_SINK + N_WINDOW} tokens, got {n}")
    gen = torch.Generator().manual_seed(seed)
    all_k = torch.from_numpy(np.ascontiguousarray(keys, dtype=np.float32))
    all_v = torch.randn(n_kv, n, dim, generator=gen)
    window = n - N_WINDOW
    static_k = torch.cat([all_k[:, :N_SINK], all_k[:, window:]], dim=1).contiguous()
    static_v = torch.cat([all_v[:, :N_SINK], all_v[:, window:]], dim=1).contiguous()
    off_k = all_k[:, N_SINK:window].to(kv_dtype).contiguous()
    off_v = all_v[:, N_SINK:window].to(kv_dtype).contiguous()
    test_t = torch.from_numpy(np.ascontiguousarray(test, dtype=np.float32))
    _, truth = exact_topk(off_k.float(), test_t, TOP_K)
    return Workload(static_k, static_v, off_k, off_v, all_k, all_v, test_t,
                    torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32)), truth.numpy(), source)


# ----------------------------------------------------------------------------- measurement


def full_step(w: Workload) -> Callable[[torch.Tensor], torch.Tensor]:
    """q [H, m, D] -> o [H, m, D]: exact attention over all N keys."""
    return lambda q: partial_attention(q, w.all_k, w.all_v, w.scale)[0]


def retrieval_step(w: Workload, index: LayerIndex, effort: int | None, search_s: list[float]
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """q [H, 1, D] -> o [H, 1, D]: search + (static + retrieved attention, merged); appends each search's
    seconds to search_s."""

    def step(q: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        found = index.search(q.numpy(), TOP_K, effort)
        search_s.append(time.perf_counter() - started)
        return decode_attention_cpu(q, w.static_k, w.static_v, w.off_k, w.off_v, torch.from_numpy(found.ids),
                                    w.scale)[0]

    return step


@dataclass
class Contender:
    """One method of a run: its table row so far, its decode step, and the search seconds its step records."""

    row: dict
    step: Callable[[torch.Tensor], torch.Tensor]
    search_s: list[float] = field(default_factory=list)
    index: LayerIndex | None = None
    effort: int | None = None


def time_interleaved(contenders: list[Contender], test: torch.Tensor, steps: int, repeats: int) -> None:
    """Time every contender's step on the same `steps` decode queries test[:, i:i+1], `repeats` times, in
    round-robin (query by query, method by method) after one warm-up each; sets step_ms (median), step_ms_min
    and search_ms in each row. Interleaving spreads the machine's slow spells over all methods alike, and each
    step starts with the caches the other methods left, as a layer's search does in a real decode."""
    queries = [test[:, i : i + 1].contiguous() for i in range(min(steps, test.shape[1]))]
    for c in contenders:
        c.step(queries[0])
        c.search_s.clear()
    times: list[list[float]] = [[] for _ in contenders]
    for _ in range(repeats):
        for q in queries:
            for c, spent in zip(contenders, times, strict=True):
                started = time.perf_counter()
                c.step(q)
                spent.append(time.perf_counter() - started)
    for c, spent in zip(contenders, times, strict=True):
        c.row["step_ms"] = float(np.median(spent)) * 1e3
        c.row["step_ms_min"] = float(np.min(spent)) * 1e3
        c.row["search_ms"] = float(np.median(c.search_s)) * 1e3 if c.search_s else 0.0


def relative_error(o: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over heads and queries of ||o - ref|| / ||ref||; o, reference [H, m, D]."""
    return float(((o - reference).norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-12)).mean())


def choose_effort(method: str, index: LayerIndex, w: Workload, target: float
                  ) -> tuple[int | None, float, float, str]:
    """Sweep the method's efforts upwards on the test queries; stop at the first with recall >= target.

    Returns (effort, recall@100, scanned fraction, how it was chosen).
    """
    test = w.test.numpy()
    n_off = w.off_k.shape[1]
    result = (None, 0.0, 0.0, "")
    for effort in EFFORTS[method]:
        found = index.search(test, TOP_K, effort)
        result = (effort, recall_at_k(found.ids, w.truth), float(found.scanned.mean()) / n_off, "")
        print(f"    {method:9s} effort {effort}: recall@100 {result[1]:.3f} scanned {result[2]:.3f}", flush=True)
        if result[1] >= target:
            return (*result[:3], "first effort reaching target")
        if effort is not None and method == "ivf" and effort >= getattr(index, "nlist", effort):
            break
    return (*result[:3], NOT_REACHED)


def split_method(spec: str) -> tuple[str, float | None]:
    """"qgraph:0.5" -> ("qgraph", 0.5); any other method -> (method, None)."""
    method, _, slack = spec.partition(":")
    return method, float(slack) if slack else None


def prepare_method(spec: str, w: Workload, args: argparse.Namespace, reference: torch.Tensor,
                   built: dict[str, LayerIndex]) -> Contender:
    """Build the method's index (or reuse `built`'s: qgraph codes the graph of "retrieval" when that is built) and
    choose its effort at the target recall; timing comes later."""
    method, slack = split_method(spec)
    row: dict = {"method": spec, "param": "", "tokens": w.n_tokens, "n_offloaded": w.off_k.shape[1]}
    if method == "full":
        return Contender(row | {"recall_at_100": 1.0, "scanned_fraction": 1.0, "build_s": 0.0, "attn_err": 0.0},
                         full_step(w))
    started = time.perf_counter()
    params = IndexParams(threads=args.index_threads)
    if method == "qgraph" and "retrieval" in built:  # the same graph, with its edges coded: the reference's own
        from engine.index.qgraph import CodedGraphIndex, code_graph

        index = CodedGraphIndex(built["retrieval"], *code_graph(built["retrieval"]))
    else:
        index = built.get(method) if method != "qgraph" else None
        index = index or build_layer_index(method, w.off_k.numpy(), w.train.numpy(), params)
    built.setdefault(method, index)
    if slack is not None:
        index = _with_slack(index, slack)
    build_s = time.perf_counter() - started
    effort, recall, scanned, how = choose_effort(method, index, w, args.target_recall)
    search_s: list[float] = []
    step = retrieval_step(w, index, effort, search_s)
    return Contender(row | {
        "param": f"{EFFORT_NAME[method]}={effort}" if effort is not None else "",
        "recall_at_100": recall, "scanned_fraction": scanned, "build_s": build_s,
        "estimated_fraction": _estimated_fraction(index, w, effort),
        "attn_err": relative_error(torch.cat([step(w.test[:, i : i + 1]) for i in range(w.test.shape[1])], 1),
                                   reference), "target_reached": how != NOT_REACHED,
    }, step, search_s, index, effort)


def _with_slack(index: LayerIndex, slack: float) -> LayerIndex:
    """A qgraph index sharing `index`'s graph and codes, at another slack."""
    from engine.index.qgraph import CodedGraphIndex

    return CodedGraphIndex(index.graph, index.codes, index.scales, slack=slack, threads=index.threads)


def _estimated_fraction(index: LayerIndex, w: Workload, effort: int | None) -> float | None:
    """qgraph: code estimates per search / offloaded keys (the exact q·k are scanned_fraction); else None."""
    if getattr(index, "last_estimated", None) is None:
        return None
    index.search(w.test.numpy(), TOP_K, effort)
    return float(index.last_estimated.mean()) / w.off_k.shape[1]


def add_ratios(rows: list[dict]) -> None:
    """speedup_vs_<base> = base step_ms / this step_ms, for the bases measured in the same run (and
    min_speedup_vs_<base> from the step_ms_min columns)."""
    times = {row["method"]: row["step_ms"] for row in rows}
    best = {row["method"]: row["step_ms_min"] for row in rows}
    for row in rows:
        for base in RATIO_BASES:
            if base in times:
                row[f"speedup_vs_{base}"] = times[base] / row["step_ms"]
        for base in RATIO_BASES:
            if base in best:
                row[f"min_speedup_vs_{base}"] = best[base] / row["step_ms_min"]


def workload_for(n_tokens: int, args: argparse.Namespace, real: tuple[list[Segment], np.ndarray] | None
                 ) -> Workload:
    """The decode workload of N = n_tokens: RoPE-tiled real vectors or synthetic ones."""
    if real is not None:
        segments, inv_freq = real
        keys, train, test = tile_vectors(segments, n_tokens, inv_freq, train_count(args, n_tokens))
        seg_len = segments[0].keys.shape[1]
        if args.vectors == "prefill":
            source = f"real, one prefill of {args.model} (RoPE x{args.rope_scale:g}), layer {args.layer}"
        elif n_tokens <= seg_len:
            source = f"real (layer {args.layer})"
        else:
            source = f"real layer {args.layer}, RoPE-tiled from {len(segments)} x {seg_len}-token segments"
    else:
        heads, kv_heads, dim = args.heads or 9, args.kv_heads or 3, args.dim or 64
        keys, train, test = synthetic_vectors(n_tokens, heads, kv_heads, dim, train_count(args, n_tokens), args.seed)
        source = f"synthetic {heads}/{kv_heads} heads, dim {dim}"
    return make_workload(keys, train, test, source, args.seed, getattr(torch, args.kv_dtype))


def run(args: argparse.Namespace, report: Report) -> None:
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted({split_method(m)[0] for m in methods} - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    token_counts = [int(t) for t in args.tokens.split(",") if t.strip()]
    vectors = args.vectors
    if vectors == "real" and (args.heads or args.kv_heads or args.dim):
        report.note("--heads/--kv-heads/--dim given: synthetic vectors used")
        vectors = "synthetic"
    real = None
    if vectors == "real":
        print(f"capturing layer {args.layer} of {args.model} ...", flush=True)
        longest = max(token_counts)
        n_segments = max(1, min(args.segments, math.ceil((longest - N_SINK) / (SEGMENT - N_SINK))))
        real = load_real_segments(args, n_segments, min(SEGMENT, longest))
    elif vectors == "prefill":
        real = load_prefill(args, max(token_counts))

    for n_tokens in token_counts:
        w = workload_for(n_tokens, args, real)
        print(f"N = {n_tokens}: {w.source}; offloaded {w.off_k.shape[1]} keys", flush=True)
        reference = full_step(w)(w.test)
        built: dict[str, LayerIndex] = {}
        contenders = [prepare_method(method, w, args, reference, built) for method in methods]
        time_interleaved(contenders, w.test, args.steps, args.repeats)
        rows = [c.row for c in contenders]
        for row in rows:
            print(f"  {row['method']:9s} {row['param']:14s} step {row['step_ms']:.3f} ms", flush=True)
        add_ratios(rows)
        for row in rows:
            report.add(echo=False, **row)
        report.note(f"N={n_tokens}: vectors {w.source}")
    report.note(
        "step_ms (step_ms_min): median (minimum), methods timed in round-robin, of one decode step's attention "
        f"for one layer (H x 1 query, top_k={TOP_K}, static {N_SINK}+{N_WINDOW}); search_ms: the index search "
        "within it; speedup_vs_X = X's "
        f"step_ms / this step_ms (min_: from step_ms_min); build_s: one layer's index. torch threads="
        f"{args.threads}, index threads={args.index_threads}; recall@100 and attn_err over the last {N_TEST} "
        "positions' queries."
    )
    if real is not None and max(token_counts) > real[0][0].keys.shape[1]:
        report.note(
            f"N beyond the captured segment: RoPE-shifted tiling of {len(real[0])} captured segments (tiles "
            f"without their first {N_SINK} tokens, keys and queries rotated by the model's RoPE to their tiled "
            "positions; the last tile is the segment whose last queries are tested); values random normal"
        )


def train_count(args: argparse.Namespace, n_tokens: int) -> int:
    """--train-queries, or as many as the app's RetrievalCache keeps for a prefix of n_tokens."""
    return args.train_queries or n_tokens // training_stride(n_tokens)
