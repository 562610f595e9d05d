"""memory: peak device memory and time per token of a random-initialised model of a real shape at long context.

For the GPU check (packaging/gpu_check.sh): Llama-3-8B's shape in bfloat16 at 32K and 128K tokens, run two ways
in one process on the same weights and tokens:
- full: transformers' sdpa attention with its DynamicCache: every layer's K/V stays on the device (the
  strongest baseline wherever it fits);
- retrieval (or another index method): the RetrievalCache: the device holds the weights, the static set and
  one layer's K/V during the prefill; the offloaded K/V and the index live in CPU memory.
The retrieval prefill runs layer by layer (engine.layer_prefill), each layer's index built on a CPU thread while
the next layers prefill; "retrieval@chunk" runs the chunk-by-chunk order instead, for comparison. prefill_s ends
with the last layer's prefill, build_s sums the per-layer index builds, build_wait_s is what of it came after the
prefill, ready_s is prefill and indexes together. Each row also gives the median decode step of the whole model
and the device's peak memory in the prefill and in decoding against the weights alone. Random weights give
meaningless text but real shapes, memory and timing. `--shape tiny --device cpu` runs the same path on a CPU in seconds.

`--setups` runs the rows again with other weights and a smaller card: each setup is WEIGHTS[@CARD_GB], e.g.
"full,4bit@12,4bit@8". "4bit"/"8bit" replace the decoder layers' linear projections in place by bitsandbytes' quantized
ones (what loading with engine.quantize makes, here from the random weights), so setups run from full to quantized;
@CARD_GB caps the process's device memory (torch.cuda.set_per_process_memory_fraction) to what an idle card of that
size leaves torch (engine.sizing.CUDA_CONTEXT_BYTES less). A row that runs out of that memory records the error.

    python -m engine.bench memory [--shape llama3-8b] [--tokens 32768,131072] [--methods full,retrieval]
        [--setups full,4bit@12,4bit@8]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import resource
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig

from engine.cache import RetrievalCache, RetrievalSettings
from engine.events import ProgressPrinter, run_steps
from engine.generate import prefill_steps
from engine.index import IndexParams, build_layer_index
from engine.layer_prefill import document_prefill_steps
from engine.quantize import held_bytes, import_bitsandbytes
from engine.retrieval import RETRIEVAL_ATTENTION
from engine.sizing import CUDA_CONTEXT_BYTES, ModelShape, weights_bytes

SHAPES = {
    "llama3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000},
}
FULL = "full"
CHUNK_MAJOR = "chunk"  # a method "retrieval@chunk" prefills chunk by chunk, not layer by layer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--tokens", default="131072", help="comma list of context lengths")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--chunk", type=int, default=4096, help="prefill chunk (tokens)")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--methods", default=f"{FULL},retrieval",
                        help=f"comma list: {FULL} (sdpa + DynamicCache) and/or index methods for the offloaded set, "
                             f"prefilled layer by layer; METHOD@{CHUNK_MAJOR} prefills chunk by chunk instead")
    parser.add_argument("--setups", default="full",
                        help="comma list of WEIGHTS[@CARD_GB]: full, 8bit or 4bit weights, optionally with the "
                             "device memory capped to a card of CARD_GB GB (full before quantized)")


def run(args: argparse.Namespace, report) -> None:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    token_counts = [int(t) for t in str(args.tokens).split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    setups = parse_setups(args.setups)
    config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=max(max(token_counts) + 64, 8192),
                         rope_theta=500000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    report.note(
        f"device {device}; kv_gib: all layers' K/V of the context in {args.dtype}; weights_gib: the weights as held "
        "(weights_gib_computed: engine.sizing.weights_bytes); cap_gib: the device memory the process may use "
        "(0: the whole card; not enforced on a CPU); peak_*_gib = torch.cuda.max_memory_allocated (0 on CPU) in the "
        "prefill and in decoding; step_ms = median decode step of the whole model; process_peak_gib = the process's "
        "peak resident memory so far (it only grows); step_vs_full and decode_peak_vs_full: this row over full "
        "attention's in the same setup; random weights, so the text is meaningless and so is scanned_fraction "
        "(random attention has no structure for an index to find)"
    )
    compile_index_kernels({m.partition("@")[0] for m in methods if m != FULL})
    weights_now = "full"
    for weights, card_gb in setups:
        if weights != weights_now:
            quantize_linears(model, weights, dtype)
            weights_now = weights
        cap = _cap(device, card_gb)
        held_gib = _weights_gib(model, device)
        computed_gib = weights_bytes(shape_of(config, dtype), weights, dtype.itemsize) / 2**30
        for n_tokens in token_counts:
            rows = []
            for method in methods:
                rows.append(_row(model, method, n_tokens, args, device, dtype, weights, card_gb, cap, held_gib,
                                 computed_gib))
            full = next((r for r in rows if r["method"] == FULL and "step_ms" in r), None)
            for row in rows:
                if full is not None and "step_ms" in row:
                    row["step_vs_full"] = round(row["step_ms"] / full["step_ms"], 2)
                    if full["peak_decode_gib"]:
                        row["decode_peak_vs_full"] = round(row["peak_decode_gib"] / full["peak_decode_gib"], 3)
                report.add(**row)
            if getattr(args, "json_out", None):  # after each length, so a run cut off later keeps these rows
                report.write_json(args.json_out)
        _cap(device, 0)


def _row(model, method: str, n_tokens: int, args, device, dtype, weights: str, card_gb: int, cap: int,
         held_gib: float, computed_gib: float) -> dict:
    config = model.config
    ids = torch.randint(0, config.vocab_size, (n_tokens,), generator=torch.Generator().manual_seed(n_tokens))
    kv_gib = 2 * config.num_hidden_layers * config.num_key_value_heads * n_tokens * config.head_dim \
        * dtype.itemsize / 2**30
    print(f"== {method}, {n_tokens} tokens, {weights} weights, card {card_gb or 'whole'}", flush=True)
    param = f"shape={args.shape},{args.dtype},{weights}" + (f",{card_gb}GB" if card_gb else "")
    row = {"method": method, "param": param, "tokens": n_tokens, "weights": weights,
           "cap_gib": round(cap / 2**30, 2), "weights_gib": round(held_gib, 4),
           "weights_gib_computed": round(computed_gib, 4), "kv_gib": round(kv_gib, 2)}
    try:
        row |= measure(model, ids, method, device, dtype, args)
    except torch.OutOfMemoryError as error:
        row["error"] = f"out of device memory: {str(error).splitlines()[0][:160]}"
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row["process_peak_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(f"   {row}", flush=True)
    return row


def parse_setups(text: str) -> list[tuple[str, int]]:
    """"full,4bit@12,4bit@8" -> [("full", 0), ("4bit", 12), ("4bit", 8)]; quantized setups after full ones."""
    setups = []
    for item in text.split(","):
        weights, _, card = item.strip().partition("@")
        if weights not in ("full", "8bit", "4bit") or (card and not card.isdigit()):
            raise ValueError(f"a setup is WEIGHTS[@CARD_GB] with WEIGHTS full, 8bit or 4bit, not {item!r}")
        setups.append((weights, int(card or 0)))
    kinds = [w for w, _ in setups]
    if any(a != b and a != "full" for a, b in itertools.pairwise(kinds)):
        raise ValueError("setups quantize the model in place: list full ones first, then one quantized kind")
    return setups


def shape_of(config: LlamaConfig, dtype: torch.dtype) -> ModelShape:
    return ModelShape(layers=config.num_hidden_layers, kv_heads=config.num_key_value_heads,
                      query_heads=config.num_attention_heads, head_dim=config.head_dim,
                      max_positions=config.max_position_embeddings, weight_bytes_per_value=dtype.itemsize,
                      hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                      vocab_size=config.vocab_size, tied_embeddings=config.tie_word_embeddings)


def quantize_linears(model, weights: str, dtype: torch.dtype) -> None:
    """Replace each decoder layer's linear projections by bitsandbytes' 8-bit or 4-bit ones, in place and on their
    device: the modules and format that loading with engine.quantize's BitsAndBytesConfig gives, made from the weights
    in memory (a random-weight model has no checkpoint to load)."""
    bnb = import_bitsandbytes()
    for layer in model.model.layers:
        for block in (layer.self_attn, layer.mlp):
            for name, linear in list(block.named_children()):
                if not isinstance(linear, torch.nn.Linear):
                    continue
                where, bias = linear.weight.device, linear.bias is not None
                if weights == "4bit":
                    quantized = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias,
                                                  compute_dtype=dtype, compress_statistics=True, quant_type="nf4",
                                                  device="meta")
                    quantized.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False,
                                                         compress_statistics=True, quant_type="nf4",
                                                         module=quantized).to(where)
                else:
                    quantized = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias,
                                                    has_fp16_weights=False, threshold=6.0, device="meta")
                    quantized.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False,
                                                         has_fp16_weights=False).to(where)
                if bias:
                    quantized.bias = linear.bias
                setattr(block, name, quantized)
                del linear
    gc.collect()
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.empty_cache()


def _cap(device: torch.device, card_gb: int) -> int:
    """Cap this process's device memory to a card of card_gb GB (0: lift the cap); returns the cap in bytes."""
    if device.type != "cuda":
        return max(0, card_gb * 2**30 - CUDA_CONTEXT_BYTES) if card_gb else 0
    total = torch.cuda.get_device_properties(device).total_memory
    cap = min(total, card_gb * 2**30 - CUDA_CONTEXT_BYTES) if card_gb else total
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    return cap if card_gb else 0


def _weights_gib(model, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device) / 2**30
    return held_bytes(model) / 2**30


def measure(model, ids: torch.Tensor, method: str, device: torch.device, dtype: torch.dtype,
            args: argparse.Namespace) -> dict:
    """Prefill ids [n] with `method`, build its index, decode --decode-steps tokens; the row's measured columns."""
    config = model.config
    if method == FULL:
        model.set_attn_implementation("sdpa")
        cache, kwargs = DynamicCache(config=config), {}
    else:
        model.set_attn_implementation(RETRIEVAL_ATTENTION)
        index_method, _, order = method.partition("@")
        settings = RetrievalSettings(method=index_method, index_params=IndexParams(knn_device=device.type))
        cache = RetrievalCache(config.num_hidden_layers, len(ids), device, settings, dtype)
        kwargs = {"folio_cache": cache}
    printer = ProgressPrinter(sys.stdout)
    prefill_done_at = []

    def progress(event) -> None:
        printer(event)
        if event.stage == "prefill" and event.done == event.total and not prefill_done_at:
            prefill_done_at.append(_elapsed(started, device))

    _reset_peak(device)
    started = time.perf_counter()
    if method == FULL:
        run_steps(prefill_steps(model, ids, cache, args.chunk), progress)
        build_s = build_wait_s = 0.0
    else:
        if order == CHUNK_MAJOR:  # every chunk through every layer, then the indexes (the order before layer-major)
            run_steps(prefill_steps(model, ids, cache, args.chunk, forward_kwargs=kwargs), progress)
            run_steps(cache.build_index_steps(), progress)
        else:  # layer by layer, each layer's index built while the next ones prefill
            run_steps(document_prefill_steps(model, ids, cache, args.chunk), progress)
        build_s, build_wait_s = cache.index_build_s, cache.index_wait_s
    ready_s = _elapsed(started, device)
    prefill_s = prefill_done_at[0] if prefill_done_at else ready_s
    prefill_peak = _peak_gib(device)
    _reset_peak(device)
    steps = []
    with torch.inference_mode():
        token = ids[-1:].view(1, 1).to(device)  # random weights: any token times the same
        for _ in range(args.decode_steps):
            started = time.perf_counter()
            token = model(input_ids=token, cache=cache, **kwargs).logits[0, -1].argmax().view(1, 1)
            steps.append(_elapsed(started, device))
    steady = sorted(steps[1:] or steps)
    return {"prefill_s": round(prefill_s, 2), "build_s": round(build_s, 2), "build_wait_s": round(build_wait_s, 2),
            "ready_s": round(ready_s, 2),
            "step_ms": round(1000 * steady[len(steady) // 2], 1), "peak_prefill_gib": prefill_peak,
            "peak_decode_gib": _peak_gib(device),
            "scanned_fraction": 1.0 if method == FULL else round(cache.stats.scanned_fraction, 4)}


def compile_index_kernels(methods: set[str]) -> None:
    """Build and search a small index of each method on float16 and float32 keys, so that no row's build time
    includes numba compiling (or loading from its cache) the kernels for that dtype."""
    rng = np.random.default_rng(0)
    for dtype in (np.float16, np.float32):
        keys = rng.standard_normal((2, 4096, 64)).astype(dtype)
        queries = rng.standard_normal((4, 512, 64)).astype(np.float32)
        for method in methods:
            build_layer_index(method, keys, queries).search(queries[:, :1], 10)


def _elapsed(started: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else 0.0
