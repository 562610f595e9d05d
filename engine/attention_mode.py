"""Which attention answers a document when the settings say "auto": full attention where it is faster and its K/V
fit the device, RetrievalAttention where it pays or where the whole K/V does not fit.

The crossovers are measured (docs/benchmarks.md, "Auto attention: the crossover"):
- CPU: a decode step of full attention grows with the document, retrieval's barely; on the CPU box retrieval's
  whole-model decode overtakes full attention's from about CPU_RETRIEVAL_FROM_TOKENS document tokens.
- GPU: full attention reads the whole K/V from device memory faster than the CPU searches it (the H100 check: 59 ms
  vs 95 ms per token at 32K for Llama-3-8B's shape), so a GPU runs full attention whenever the K/V fit its free
  memory with room to spare, and retrieval otherwise (128K tokens of Llama-3-8B: 16 GiB of K/V beside 15 GiB of
  weights on a 24 GB card).

Plain arithmetic, no torch: the app and the engine share it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.sizing import ModelShape
from engine.units import format_bytes

AUTO = "auto"
FULL, RETRIEVAL = "full", "retrieval"
CPU_RETRIEVAL_FROM_TOKENS = 16384  # CPU: retrieval from this many document tokens (measured crossover)
DEVICE_HEADROOM = 0.8  # full attention on a GPU when the whole K/V takes at most this share of its free memory
RAM_HEADROOM = 0.5  # full attention on a CPU when its K/V take at most this share of the free RAM


@dataclass(frozen=True)
class AttentionChoice:
    """The attention mode that answers ("full", "retrieval", or another mode set explicitly) and why, in words."""

    mode: str
    reason: str


def full_kv_bytes(shape: ModelShape, tokens: int) -> int:
    """Bytes of full attention's K/V for `tokens` tokens in the model's compute dtype."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * tokens * shape.weight_bytes_per_value


def choose_attention(setting: str, device_kind: str, free_memory: int | None, tokens: int,
                     shape: ModelShape) -> AttentionChoice:
    """The mode for a document of `tokens` tokens (prompt and answer included) under the attention `setting`.

    device_kind: "cpu" or "cuda" (the model's device type); free_memory: free bytes of that device (free RAM on a
    CPU), None where unknown. A setting other than "auto" is kept as it is.
    """
    if setting != AUTO:
        return AttentionChoice(setting, f"{setting} attention, as set in the settings")
    kv = full_kv_bytes(shape, tokens)
    headroom = RAM_HEADROOM if device_kind == "cpu" else DEVICE_HEADROOM
    if free_memory is not None and kv > headroom * free_memory:
        where = "RAM" if device_kind == "cpu" else "device memory"
        return AttentionChoice(RETRIEVAL, f"retrieval: the whole K/V ({format_bytes(kv)}) does not fit the free "
                                          f"{where} ({format_bytes(free_memory)})")
    if device_kind == "cpu":
        if tokens >= CPU_RETRIEVAL_FROM_TOKENS:
            return AttentionChoice(RETRIEVAL, f"retrieval: {tokens:,} tokens on a CPU, where retrieval is faster from "
                                              f"{CPU_RETRIEVAL_FROM_TOKENS:,}")
        return AttentionChoice(FULL, f"full attention: {tokens:,} tokens on a CPU, where full attention is faster "
                                     f"below {CPU_RETRIEVAL_FROM_TOKENS:,}")
    return AttentionChoice(FULL, f"full attention: the whole K/V ({format_bytes(kv)}) fits the GPU's free memory")
