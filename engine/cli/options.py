"""Options shared by the commands that load a model: `ask` and `library add`."""

from __future__ import annotations

import argparse

from engine.config import ATTENTION_MODES, CPU_WEIGHTS, WEIGHTS, EngineConfig


def add_model_arguments(ask: argparse.ArgumentParser) -> None:
    """The model and attention options shared by `ask` and `library add`."""
    defaults = EngineConfig()
    ask.add_argument("--model", default=defaults.model,
                     help="'default', a catalog id (python -m engine models list), a model folder or a hub id")
    ask.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    ask.add_argument("--dtype", default=defaults.dtype, help="auto, float32, bfloat16 or float16")
    ask.add_argument("--weights", default=defaults.weights, choices=WEIGHTS,
                     help="full, or the linear layers quantized to 8bit or 4bit at load (needs bitsandbytes)")
    ask.add_argument("--cpu-weights", default=defaults.cpu_weights, choices=CPU_WEIGHTS,
                     help=f"on a CPU: int8 linear weights with float32 scales, or full (in --dtype); default "
                     f"{defaults.cpu_weights}")
    ask.add_argument("--attention", default=defaults.attention, choices=ATTENTION_MODES,
                     help="retrieval (default), full, window-only, or retrieval with another key index")
    ask.add_argument("--top-k", type=int, default=defaults.top_k,
                     help="keys retrieved per head and step (the least, with --attention-share)")
    ask.add_argument("--attention-share", type=float, default=defaults.attention_share,
                     help="share of each head's attention to retrieve, estimated from the document's prefill "
                     "(0: a fixed --top-k; 1: every key)")
    ask.add_argument("--n-sink", type=int, default=defaults.n_sink, help="first tokens kept in the static set")
    ask.add_argument("--n-window", type=int, default=defaults.n_window, help="last tokens kept in the static set")
    ask.add_argument("--search-effort", type=int, default=defaults.search_effort,
                     help="index search queue size (HNSW efSearch, IVF nprobe)")


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(model=args.model, device=args.device, dtype=args.dtype, weights=args.weights,
                        cpu_weights=args.cpu_weights, attention=args.attention,
                        n_sink=args.n_sink, n_window=args.n_window, top_k=args.top_k,
                        attention_share=args.attention_share,
                        search_effort=args.search_effort, max_new_tokens=args.max_new_tokens,
                        temperature=getattr(args, "temperature", EngineConfig.temperature),
                        top_p=getattr(args, "top_p", EngineConfig.top_p))
