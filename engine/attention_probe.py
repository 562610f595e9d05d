"""Full-attention citations: where the answer tokens looked in the document (top attention positions).

Qt-free. After a full-attention answer, the answer tokens are run once more over the cached prompt with
eager attention; each layer's attention weights are summed over heads and layers as they are produced
(one layer in memory at a time), and each answer token keeps its `top` document positions.
"""

from __future__ import annotations

import torch


def full_attention_steps(model, cache, prompt_len: int, answer_ids: list[int], doc_start: int, doc_end: int,
                         top: int = 32) -> list[list[tuple[int, float]]]:
    """Per answer token, [(document position, attention weight)]; [] when the cache cannot be reused."""
    if cache is None or not answer_ids or doc_end <= doc_start or cache.get_seq_length() < prompt_len:
        return []
    extra = cache.get_seq_length() - prompt_len
    if extra > 0:
        cache.crop(-extra)  # drop the answer tokens generate already wrote: they are run again below
    total: list[torch.Tensor] = []

    def record(_module, _inputs, output) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            return
        summed = weights[0, :, :, doc_start:doc_end].float().sum(0)  # [answer, document]
        if total:
            total[0] += summed
        else:
            total.append(summed)

    hooks = [layer.self_attn.register_forward_hook(record) for layer in model.model.layers]
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([answer_ids], device=model.device), cache=cache, use_cache=True,
                  logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)
        for hook in hooks:
            hook.remove()
    if not total:
        return []
    weights, positions = torch.topk(total[0], min(top, doc_end - doc_start), dim=-1)
    return [[(doc_start + int(p), float(w)) for p, w in zip(row_p, row_w, strict=True)]
            for row_p, row_w in zip(positions.tolist(), weights.tolist(), strict=True)]
