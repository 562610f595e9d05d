"""Pure attention functions: partial attention returning (output, log-sum-exp), and the exact merge.

Softmax attention over a key set S can be split over any partition S = A ∪ B: with
o_X = softmax(q·K_X) V_X and lse_X = log Σ_{k∈X} exp(q·k), the whole is
    lse = logaddexp(lse_A, lse_B),  o = exp(lse_A - lse) o_A + exp(lse_B - lse) o_B.
RetrievalAttention computes A (the static set) on the device and B (retrieved keys) on the CPU and
merges them: only o and lse cross between them, never K/V.

Shapes: H query heads, H_kv KV heads (H % H_kv == 0, query head h reads KV head h // (H // H_kv)),
m queries per head, n keys, D head dim. All functions compute in float32 and return float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      causal_tail: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention of q over one key set.

    Args:
        q: [H, m, D] queries.
        k, v: [H_kv, n, D] keys and values shared by each group of H // H_kv query heads.
        scale: the softmax scale (1/sqrt(D) for most models).
        causal_tail: the last `causal_tail` keys are the m queries' own tokens, in order (m ==
            causal_tail): query i may only see tail keys 0..i. 0 = every query sees every key.
    Returns:
        o: [H, m, D] attention output, lse: [H, m] log-sum-exp of the scaled scores
        (-inf and o = 0 where a query sees no key).
    """
    n_heads, m, dim = q.shape
    n_kv = k.shape[0]
    group = n_heads // n_kv
    qg = q.float().reshape(n_kv, group * m, dim)
    scores = torch.bmm(qg, k.float().transpose(1, 2)) * scale  # [H_kv, group*m, n]
    scores = scores.view(n_kv, group, m, -1)
    if causal_tail:
        n = scores.shape[-1]
        query_pos = torch.arange(m, device=q.device).view(m, 1) + (n - causal_tail)
        key_pos = torch.arange(n, device=q.device).view(1, n)
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [H_kv, group, m]
    weights = torch.exp(scores - _finite(lse).unsqueeze(-1))
    o = torch.bmm(weights.view(n_kv, group * m, -1), v.float()).view(n_heads, m, dim)
    return o, lse.reshape(n_heads, m)


def _finite(lse: torch.Tensor) -> torch.Tensor:
    """lse with -inf (no keys) replaced by a finite value, so exp(scores - lse) is 0, not nan."""
    return lse.clamp_min(torch.finfo(torch.float32).min)


def merge_attention_states(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key sets into attention over their union, exactly.

    Args:
        o_a, o_b: [..., D] partial outputs; lse_a, lse_b: [...] their log-sum-exps (-inf = empty set).
    Returns:
        (o [..., D], lse [...]) as if attention had run over both sets at once.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    w_a = torch.exp(lse_a - _finite(lse)).unsqueeze(-1)
    w_b = torch.exp(lse_b - _finite(lse)).unsqueeze(-1)
    return w_a * o_a + w_b * o_b, lse


def retrieved_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ids: torch.Tensor, scale: float,
                        return_weights: bool = False):
    """Exact attention of each query over its own retrieved keys.

    Args:
        q: [H, m, D] queries.
        k, v: [H_kv, N, D] the offloaded keys/values the ids point into.
        ids: [H, m, top_k] int64 positions in 0..N-1, -1 for "no key" (ignored).
        scale: softmax scale.
    Returns:
        o: [H, m, D], lse: [H, m] over the retrieved keys only; with return_weights also the softmax
        weights [H, m, top_k] of each retrieved key (0 for padding).
    """
    n_heads, n_kv = q.shape[0], k.shape[0]
    kv_head = torch.arange(n_heads, device=q.device) // (n_heads // n_kv)
    valid = ids >= 0
    safe_ids = ids.clamp_min(0)
    rows = kv_head.view(n_heads, 1, 1).expand_as(safe_ids)
    k_sel = k[rows, safe_ids].float()  # [H, m, top_k, D]
    v_sel = v[rows, safe_ids].float()
    scores = torch.einsum("hmd,hmkd->hmk", q.float(), k_sel) * scale
    scores = scores.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [H, m]
    weights = torch.exp(scores - _finite(lse).unsqueeze(-1))
    o = torch.einsum("hmk,hmkd->hmd", weights, v_sel)
    return (o, lse, weights) if return_weights else (o, lse)


def causal_prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             scale: float) -> torch.Tensor:
    """Exact attention of a prefill chunk over the prefix so far, in the model's dtype: no mask tensor, and no copy of
    K/V per query head (sdpa's `enable_gqa`; on CUDA flash attention takes both as they are).

    Args:
        query: [1, H, m, D] the chunk's queries, at positions n - m .. n - 1.
        key, value: [1, H_kv, n, D] the prefix's keys and values up to the chunk's last token (n >= m).
        scale: the softmax scale.
    Returns:
        [1, m, H, D] (transformers' attention output layout): query i sees keys 0 .. n - m + i.
    """
    m, n = query.shape[2], key.shape[2]
    gqa = key.shape[1] != query.shape[1]
    if gqa and not gqa_without_copies(query, key, value):
        group = query.shape[1] // key.shape[1]
        key, value, gqa = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1), False
    mask = causal_lower_right(m, n) if m < n else None
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=mask is None and m > 1,
                                         scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)


def gqa_without_copies(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether sdpa can run grouped-query attention on these tensors without a K/V copy per query head that costs
    memory. On CUDA only flash attention does (bf16/fp16 on Ampere or newer); elsewhere torch would fall back to its
    math kernel, which materialises every score ([H, chunk, prefix]: tens of GiB at 128K), so the caller copies K/V
    per query head instead and keeps the memory-efficient kernel. On the CPU sdpa handles the groups itself."""
    if query.device.type != "cuda":
        return True
    from torch.backends.cuda import SDPAParams, can_use_flash_attention

    # is_causal False as torch's own causal_lower_right dispatch asks (flash refuses the flag on a non-square chunk)
    return can_use_flash_attention(SDPAParams(query, key, value, None, 0.0, False, True), False)
