"""Partial attention, the log-sum-exp merge and retrieved attention against exact references."""

import pytest
import torch
import torch.nn.functional as F

from engine.attention import causal_prefill_attention, merge_attention_states, partial_attention, retrieved_attention
from engine.cpu_decode import decode_attention_cpu, retrieved_attention_cpu

H, H_KV, D = 6, 2, 16
SCALE = D**-0.5


def reference(q, k, v, mask=None):
    """sdpa over keys repeated for GQA: q [H, m, D], k/v [H_kv, n, D] -> [H, m, D]."""
    group = q.shape[0] // k.shape[0]
    k_full, v_full = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    return F.scaled_dot_product_attention(q, k_full, v_full, attn_mask=mask, scale=SCALE)


def random_qkv(m=3, n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(H, m, D, generator=g), torch.randn(H_KV, n, D, generator=g) * 2,
            torch.randn(H_KV, n, D, generator=g))


def test_partial_attention_over_everything_is_full_attention():
    q, k, v = random_qkv()
    o, lse = partial_attention(q, k, v, SCALE)
    torch.testing.assert_close(o, reference(q, k, v), atol=1e-5, rtol=1e-5)
    group = H // H_KV
    expected_lse = torch.logsumexp(q @ k.repeat_interleave(group, 0).transpose(1, 2) * SCALE, -1)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("m, n", [(1, 1), (1, 50), (7, 7), (7, 50), (50, 50)])
def test_causal_prefill_attention_is_causal_attention_over_the_prefix_so_far(m, n):
    """A chunk of m queries at the end of an n-token prefix: each sees the keys up to its own position."""
    q, k, v = random_qkv(m, n)
    mask = torch.arange(n).view(1, n) <= torch.arange(n - m, n).view(m, 1)
    got = causal_prefill_attention(q[None], k[None], v[None], SCALE)  # [1, m, H, D]
    torch.testing.assert_close(got[0].transpose(0, 1), reference(q, k, v, mask), atol=1e-5, rtol=0)


def test_causal_prefill_attention_copies_k_v_per_head_where_sdpa_cannot_group(monkeypatch):
    """A GPU without flash attention (before Ampere, or float32) gets K/V copied per query head: the same output."""
    monkeypatch.setattr("engine.attention.gqa_without_copies", lambda *tensors: False)
    q, k, v = random_qkv(7, 50)
    mask = torch.arange(50).view(1, 50) <= torch.arange(43, 50).view(7, 1)
    got = causal_prefill_attention(q[None], k[None], v[None], SCALE)
    torch.testing.assert_close(got[0].transpose(0, 1), reference(q, k, v, mask), atol=1e-5, rtol=0)


def test_causal_tail_lets_each_query_see_only_earlier_tail_keys():
    m, n = 4, 20
    q, k, v = random_qkv(m=m, n=n)
    allowed = torch.ones(m, n, dtype=torch.bool)
    allowed[:, n - m :] = torch.tril(torch.ones(m, m, dtype=torch.bool))
    o, _ = partial_attention(q, k, v, SCALE, causal_tail=m)
    torch.testing.assert_close(o, reference(q, k, v, mask=allowed), atol=1e-5, rtol=1e-5)


def test_merging_any_two_disjoint_parts_equals_attention_over_the_whole():
    q, k, v = random_qkv(n=64)
    part = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    a, b = part[:23], part[23:]
    o_a, lse_a = partial_attention(q, k[:, a], v[:, a], SCALE)
    o_b, lse_b = partial_attention(q, k[:, b], v[:, b], SCALE)
    o, lse = merge_attention_states(o_a, lse_a, o_b, lse_b)
    o_all, lse_all = partial_attention(q, k, v, SCALE)
    torch.testing.assert_close(o, o_all, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_all, atol=1e-5, rtol=1e-5)


def test_merging_with_an_empty_set_changes_nothing():
    q, k, v = random_qkv()
    o, lse = partial_attention(q, k, v, SCALE)
    empty_o, empty_lse = torch.zeros_like(o), torch.full_like(lse, float("-inf"))
    merged, merged_lse = merge_attention_states(o, lse, empty_o, empty_lse)
    torch.testing.assert_close(merged, o)
    torch.testing.assert_close(merged_lse, lse)
    both_empty, _ = merge_attention_states(empty_o, empty_lse, empty_o, empty_lse)
    assert torch.all(both_empty == 0)


@pytest.mark.parametrize("top_k", [1, 7, 50])
def test_retrieved_attention_equals_brute_force_top_k_attention(top_k):
    q, k, v = random_qkv(m=2, n=50)
    group = H // H_KV
    scores = q @ k.repeat_interleave(group, 0).transpose(1, 2)  # [H, m, n]
    ids = scores.topk(top_k, dim=-1).indices
    o, lse = retrieved_attention(q, k, v, ids, SCALE)
    for h in range(H):
        for i in range(2):
            sel = ids[h, i]
            kv = h // group
            o_ref, lse_ref = partial_attention(q[h : h + 1, i : i + 1], k[kv : kv + 1, sel], v[kv : kv + 1, sel], SCALE)
            torch.testing.assert_close(o[h, i], o_ref[0, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lse[h, i], lse_ref[0, 0], atol=1e-5, rtol=1e-5)


def test_retrieved_attention_ignores_padding_ids():
    q, k, v = random_qkv(m=1, n=10)
    ids = torch.tensor([[[3, 5, -1, -1]]]).expand(H, 1, 4)
    o, lse = retrieved_attention(q, k, v, ids, SCALE)
    o_ref, lse_ref = retrieved_attention(q, k, v, ids[..., :2].contiguous(), SCALE)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(lse, lse_ref)


def test_retrieved_attention_weights_are_the_softmax_over_the_retrieved_keys():
    q, k, v = random_qkv(m=1, n=30)
    ids = torch.arange(10).expand(H, 1, 10).contiguous()
    *_, weights = retrieved_attention(q, k, v, ids, SCALE, return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(H, 1))
    group = H // H_KV
    expected = torch.softmax(q @ k[:, :10].repeat_interleave(group, 0).transpose(1, 2) * SCALE, -1)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_compiled_cpu_retrieved_attention_equals_the_torch_reference(kv_dtype):
    """What a GPU host runs on the CPU (one numba pass over the retrieved rows, float16 read in place) gives the
    torch function's o, lse and weights, with -1 padding and a head that retrieved nothing."""
    q, k, v = random_qkv(m=1, n=200, seed=4)
    k, v = k.to(kv_dtype), v.to(kv_dtype)
    g = torch.Generator().manual_seed(5)
    ids = torch.argsort(torch.rand(H, 1, 200, generator=g), dim=-1)[..., :20].clone()  # distinct per row
    ids[0, 0, 15:] = -1
    ids[1, 0, :] = -1
    o, lse, weights = retrieved_attention_cpu(q, k, v, ids, SCALE)
    o_ref, lse_ref, weights_ref = retrieved_attention(q, k, v, ids, SCALE, return_weights=True)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, weights_ref, atol=1e-6, rtol=1e-5)
    assert lse[1, 0] == float("-inf") and torch.all(o[1, 0] == 0)


def test_compiled_cpu_retrieved_attention_refuses_other_kv_dtypes():
    q, k, v = random_qkv(m=1, n=20)
    ids = torch.zeros(H, 1, 4, dtype=torch.int64)
    with pytest.raises(TypeError, match="float32 or float16"):
        retrieved_attention_cpu(q, k.bfloat16(), v.bfloat16(), ids, SCALE)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_compiled_cpu_decode_step_equals_static_plus_retrieved_merged(kv_dtype):
    """The one-pass CPU decode step gives what the device route computes: partial attention over the static set,
    retrieved attention over the ids, merged by log-sum-exp; with -1 padding, a head that retrieved nothing, and
    the static set as the cache hands it over (a slice of a larger buffer)."""
    q, k, v = random_qkv(m=1, n=300, seed=6)
    _, static_k, static_v = random_qkv(m=1, n=70, seed=7)
    static_k, static_v = static_k[:, :40], static_v[:, :40]  # rows contiguous, heads strided, as in the cache
    k, v, static_k, static_v = (x.to(kv_dtype) for x in (k, v, static_k, static_v))
    g = torch.Generator().manual_seed(8)
    ids = torch.argsort(torch.rand(H, 1, 300, generator=g), dim=-1)[..., :25].clone()
    ids[0, 0, 20:] = -1
    ids[3, 0, :] = -1
    o, lse, lse_off, weights = decode_attention_cpu(q, static_k, static_v, k, v, ids, SCALE)
    o_static, lse_static = partial_attention(q, static_k, static_v, SCALE)
    o_off, lse_off_ref, weights_ref = retrieved_attention(q, k, v, ids, SCALE, return_weights=True)
    o_ref, lse_ref = merge_attention_states(o_static, lse_static, o_off, lse_off_ref)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_off, lse_off_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, weights_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(o[3], o_static[3], atol=1e-5, rtol=1e-5)  # nothing retrieved: the static part


def test_compiled_cpu_decode_step_over_all_keys_is_full_attention():
    q, k, v = random_qkv(m=1, n=120, seed=9)
    ids = torch.arange(20, 120).expand(H, 1, 100).contiguous()
    o, lse, _, _ = decode_attention_cpu(q, k[:, :20], v[:, :20], k[:, 20:], v[:, 20:], ids - 20, SCALE)
    torch.testing.assert_close(o, reference(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, partial_attention(q, k, v, SCALE)[1], atol=1e-5, rtol=1e-5)


def test_compiled_cpu_decode_step_refuses_several_queries_and_other_dtypes():
    q, k, v = random_qkv(m=2, n=20)
    ids = torch.zeros(H, 2, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="one query per head"):
        decode_attention_cpu(q, k, v, k, v, ids, SCALE)
    with pytest.raises(TypeError, match="float32 or float16"):
        decode_attention_cpu(q[:, :1], k.bfloat16(), v.bfloat16(), k, v, ids[:, :1], SCALE)
