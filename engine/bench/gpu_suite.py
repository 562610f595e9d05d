"""Peak memory and decode time of a random-initialised model of a real shape at long context (GPU check).

For the GPU check (packaging/gpu_check.sh): Llama-3-8B's shape in bfloat16 at 128K tokens shows
what the device holds (weights + static set + one layer's K/V during prefill + working buffers)
against the weights alone, and the time per decode token. Random weights give meaningless text but
real shapes, memory and timing. `--shape tiny` runs the same path on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from engine.cache import RetrievalCache, RetrievalSettings
from engine.generate import prefill
from engine.index import IndexParams
from engine.retrieval import RETRIEVAL_ATTENTION

SHAPES = {
    "llama3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--chunk", type=int, default=4096, help="prefill chunk (tokens)")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--method", default="retrieval", help="index method for the offloaded set")


def run(args: argparse.Namespace, report) -> None:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=max(args.tokens + 64, 8192),
                         rope_theta=500000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().set_attn_implementation(RETRIEVAL_ATTENTION)
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    _reset_peak(device)
    settings = RetrievalSettings(method=args.method, index_params=IndexParams(knn_device=device.type))
    cache = RetrievalCache(config.num_hidden_layers, args.tokens, device, settings, dtype)
    kwargs = {"folio_cache": cache}
    ids = torch.randint(0, config.vocab_size, (args.tokens,))

    started = time.perf_counter()
    logits = prefill(model, ids, cache, args.chunk, forward_kwargs=kwargs)
    prefill_s = _elapsed(started, device)
    prefill_peak = _peak_gib(device)
    started = time.perf_counter()
    for _ in cache.build_index_steps():
        pass
    build_s = time.perf_counter() - started
    _reset_peak(device)
    steps = []
    with torch.inference_mode():
        token = logits.argmax().view(1, 1)
        for _ in range(args.decode_steps):
            started = time.perf_counter()
            token = model(input_ids=token, cache=cache, **kwargs).logits[0, -1].argmax().view(1, 1)
            steps.append(_elapsed(started, device))
    decode_peak = _peak_gib(device)
    steady = sorted(steps[1:] or steps)
    report.add(method=args.method, param=f"shape={args.shape},{args.dtype}", tokens=args.tokens,
               prefill_s=round(prefill_s, 2), build_s=round(build_s, 2),
               step_ms=round(1000 * steady[len(steady) // 2], 1), weights_gib=round(weights_gib, 2),
               peak_prefill_gib=prefill_peak, peak_decode_gib=decode_peak,
               process_peak_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
               scanned_fraction=round(cache.stats.scanned_fraction, 4))
    report.note(f"device {device}; peak_*_gib = torch.cuda.max_memory_allocated (0 on CPU); step_ms = median "
                "decode step of the whole model; random weights, so the text is meaningless")


def _elapsed(started: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else 0.0
