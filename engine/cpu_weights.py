"""Weight-only int8 linear layers for CPU decoding: each weight row stored as 8-bit integers with one float32 scale
per output channel; the activations stay float32.

A CPU decode step is one token: its matrix-vector products read every weight once and are bound by the bytes read
(docs/benchmarks.md, profile). Int8 weights are a quarter of float32's bytes. Only the weights are rounded (to
scale/2 per value at most), never the activations, so the logits stay close to float32's, unlike torch's dynamic
quantization, which also rounds each token's activations to 8 bits.

The product for a few rows (decode) is a compiled kernel (numba) that reads the int8 rows in place and converts them
as it goes; torch's own `_weight_int8pack_mm` computes the same thing but was 2-10x slower than float32's `linear`
on the CPU box (docs/benchmarks.md). For many rows (prefill chunks), the layer dequantizes its weight to float32 once
per call and uses torch's matrix product: that costs one pass over the weight against a product of `rows` passes.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import nn

KERNEL_MAX_ROWS = 4  # up to this many rows use the compiled kernel; more are dequantized once per call


@njit(cache=True, nogil=True, fastmath=True)
def int8_matvec_kernel(x, weight, scales, bias, out):
    """out[m, n] = scales[n] * sum_k x[m, k] * weight[n, k] + bias[n], one weight row at a time (the compiler
    vectorizes the row's dot product; eight-row blocks were 6-18% faster on the decoder layers' shapes but half as
    fast on the output head's 49,152 rows, on the CPU box).
    x [M, K] float32, weight [N, K] int8, scales and bias [N] float32, out [M, N] float32."""
    n_out, k_in = weight.shape
    for m in range(x.shape[0]):
        xm = x[m]
        for i in range(n_out):
            row = weight[i]
            acc = np.float32(0.0)
            for j in range(k_in):
                acc += xm[j] * np.float32(row[j])
            out[m, i] = acc * scales[i] + bias[i]


def quantize_rows(weight: torch.Tensor, block_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: (q [N, K] int8, scales [N] float32) with weight ~ q * scales[:, None],
    scale = max |row| / 127, so each value is off by at most scale / 2. An all-zero row gets scale 1. Done
    block_rows rows at a time, so its float temporaries stay small beside the weight (the output head is 113 MB)."""
    q = torch.empty(weight.shape, dtype=torch.int8)
    scales = torch.empty(weight.shape[0], dtype=torch.float32)
    for start in range(0, weight.shape[0], block_rows):
        w = weight.detach()[start : start + block_rows].float()
        amax = w.abs().amax(dim=1)
        block_scales = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q[start : start + block_rows] = torch.round(w / block_scales[:, None]).clamp_(-127, 127)
        scales[start : start + block_rows] = block_scales
    return q, scales


class Int8Linear(nn.Module):
    """nn.Linear's forward with int8 weights and float32 per-output-channel scales (see the module docstring).

    Buffers: weight_int8 [out, in] int8, scales [out] float32, bias [out] float32 or None. Input [..., in] in any
    float dtype; output [..., out] in the input's dtype, computed in float32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scales = quantize_rows(linear.weight)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        # the kernel's arguments as numpy views of the buffers, made once: a decode step calls ~200 of these layers
        self._kernel_arrays = (q.numpy(), scales.numpy(),
                               np.zeros(self.out_features, np.float32) if self.bias is None else self.bias.numpy())

    def dequantized(self) -> torch.Tensor:
        """The weight as float32 [out, in] (what the int8 values and scales stand for)."""
        return self.weight_int8.float() * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        if rows.shape[0] <= KERNEL_MAX_ROWS:
            out = np.empty((rows.shape[0], self.out_features), np.float32)
            int8_matvec_kernel(rows.contiguous().numpy(), *self._kernel_arrays, out)
            out = torch.from_numpy(out)
        else:
            out = nn.functional.linear(rows, self.dequantized(), self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_linear_layers(model: nn.Module) -> int:
    """Replace every nn.Linear of a CPU model with an Int8Linear, in place (module substitution at load, as
    bitsandbytes does for GPUs); the output head too, while a tied input embedding keeps its float32 table.
    The parameters left (embedding, norms) are copied out of the checkpoint: from_pretrained's tensors share one
    mapping of the weight file, which any of them keeps whole in memory (the default model's 540 MB beside its int8
    copy). Returns how many layers were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                if child.weight.device.type != "cpu":
                    raise ValueError(f"int8 CPU weights need the model on the CPU, not {child.weight.device}")
                setattr(parent, name, Int8Linear(child))
                replaced += 1
    for parameter in model.parameters():
        parameter.data = parameter.data.clone()
    return replaced
