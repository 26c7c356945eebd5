"""Shared network blocks: attention against a naive reference, masking, KV cache, UNet, text encoder."""

import math

import pytest
import torch

from t2i.nn import (
    Attention,
    KVCache,
    ResBlock,
    TextEncoder,
    TextEncoderConfig,
    TimestepEmbedding,
    TransformerBlock,
    UNet,
    UNetConfig,
    timestep_embedding,
)
from t2i.nn.blocks import norm_groups


def naive_attention(attn: Attention, x, context=None, keep=None, causal=False):
    """softmax(q k^T / sqrt(d) + mask) v written out by hand, with the module's own projections."""
    b, lq, dim = x.shape
    h = attn.heads
    src = x if context is None else context
    q = x @ attn.to_q.weight.T
    k, v = (src @ attn.to_kv.weight.T).chunk(2, dim=-1)
    q, k, v = (t.reshape(b, -1, h, dim // h).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim // h)
    allowed = torch.ones(b, 1, lq, k.shape[2], dtype=torch.bool)
    if keep is not None:
        allowed = allowed & keep[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(lq, k.shape[2], dtype=torch.bool).tril()
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, lq, dim)
    return out @ attn.to_out.weight.T


def wake(model: torch.nn.Module) -> torch.nn.Module:
    """Give zero-initialised weights (output convs/projections) small random values, so every path is live."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.05)
    return model


# ---------------------------------------------------------------------------------------------- attention
def test_self_attention_matches_naive_reference():
    torch.manual_seed(0)
    attn = Attention(16, heads=4)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(attn(x), naive_attention(attn, x), atol=1e-5, rtol=1e-5)
    causal = Attention(16, heads=2, causal=True)
    torch.testing.assert_close(causal(x), naive_attention(causal, x, causal=True), atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_reference_and_ignores_masked_tokens():
    torch.manual_seed(0)
    attn = Attention(16, heads=4, context_dim=12)
    x, ctx = torch.randn(2, 6, 16), torch.randn(2, 4, 12)
    keep = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = attn(x, ctx, context_mask=keep)
    torch.testing.assert_close(out, naive_attention(attn, x, ctx, keep), atol=1e-5, rtol=1e-5)

    other = ctx.clone()
    other[0, 2:] = torch.randn(2, 12) * 10  # only masked tokens of sample 0 change
    torch.testing.assert_close(attn(x, other, context_mask=keep), out, atol=0, rtol=0)
    other[0, 1] += 1.0  # an unmasked token does matter
    assert not torch.allclose(attn(x, other, context_mask=keep)[0], out[0], atol=1e-4)


def test_fully_masked_rows_give_zeros_not_nan():
    torch.manual_seed(0)
    attn = Attention(8, heads=2, context_dim=8)
    x, ctx = torch.randn(2, 3, 8, requires_grad=True), torch.randn(2, 4, 8)
    keep = torch.tensor([[False] * 4, [True, False, True, False]])
    out = attn(x, ctx, context_mask=keep)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # Causal + left padding: the first query sees only padding.
    causal = Attention(8, heads=2, causal=True)
    pad = torch.tensor([[False, True, True], [True, True, True]])
    y = causal(x.detach(), context_mask=pad)
    assert torch.isfinite(y).all() and torch.equal(y[0, 0], torch.zeros(8))
    torch.testing.assert_close(y[:, 1:], naive_attention(causal, x.detach(), keep=pad, causal=True)[:, 1:],
                               atol=1e-5, rtol=1e-5)


def test_kv_cache_incremental_decoding_equals_full_causal_pass():
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(TransformerBlock(16, 4, context_dim=8, causal=True) for _ in range(2)).eval()
    x, ctx = torch.randn(2, 7, 16), torch.randn(2, 3, 8)

    def run(seq, caches=None):
        for i, block in enumerate(blocks):
            seq = block(seq, context=ctx, cache=None if caches is None else caches[i])
        return seq

    full = run(x)
    caches = [KVCache() for _ in blocks]
    parts = [run(x[:, :3], caches), run(x[:, 3:5], caches)]  # a prompt, then a chunk of two
    parts += [run(x[:, i : i + 1], caches) for i in range(5, 7)]  # then token by token
    assert caches[0].length == 7
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    # And the full pass really is causal: changing the future leaves the past alone.
    y = x.clone()
    y[:, 4:] = torch.randn(2, 3, 16)
    torch.testing.assert_close(run(y)[:, :4], full[:, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(run(y)[:, 4:], full[:, 4:], atol=1e-3)


def test_kv_cache_with_padding_mask_matches_full_pass():
    torch.manual_seed(0)
    attn = Attention(8, heads=2, causal=True)
    x = torch.randn(2, 5, 8)
    keep = torch.tensor([[False, True, True, True, True], [True] * 5])  # left padding on sample 0
    full = attn(x, context_mask=keep)
    cache = KVCache()
    a = attn(x[:, :2], context_mask=keep[:, :2], cache=cache)
    b = attn(x[:, 2:], context_mask=keep, cache=cache)
    torch.testing.assert_close(torch.cat([a, b], dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="self-attention only"):
        Attention(8, 2, context_dim=8)(x, x, cache=KVCache())


# --------------------------------------------------------------------------------------- embeddings/blocks
def test_timestep_embedding_resolves_close_times():
    t = torch.tensor([0.0, 0.5, 0.501])
    e = timestep_embedding(t * 1000, 9)
    assert e.shape == (3, 9) and e.dtype == torch.float32
    torch.testing.assert_close(e[0, :4], torch.ones(4))  # cos(0) = 1
    assert (e[1] - e[2]).abs().max() > 0.5  # 1e-3 apart in t is still clearly distinguishable
    emb = TimestepEmbedding(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert emb(t).shape == (3, 32)


def test_norm_groups_divide_small_widths():
    assert [norm_groups(c) for c in (4, 8, 12, 32, 64, 128, 256)] == [1, 2, 3, 8, 16, 32, 32]


def test_resblock_changes_channels_and_uses_embedding():
    torch.manual_seed(0)
    block = ResBlock(8, 16, emb_dim=4)
    x = torch.randn(2, 8, 6, 6)
    a, b = block(x, torch.zeros(2, 4)), block(x, torch.ones(2, 4))
    assert a.shape == (2, 16, 6, 6)
    assert not torch.allclose(a, b, atol=1e-4)


# -------------------------------------------------------------------------------------------------- UNet
def tiny_unet(in_ch, mult, context_dim=None):
    return UNet(UNetConfig(in_channels=in_ch, out_channels=in_ch, channels=8, channel_mult=mult,
                           attention_levels=(1,), heads=2, context_dim=context_dim))


def test_unet_shapes_and_zero_output_at_init():
    torch.manual_seed(0)
    latent = tiny_unet(4, (1, 2, 2), context_dim=12)
    x = torch.randn(2, 4, 8, 8)
    out = latent(x, torch.rand(2), torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == x.shape and not out.any()  # zero-initialised output conv
    pixel = tiny_unet(3, (1, 2))
    x = torch.randn(2, 3, 16, 16)
    assert pixel(x, torch.tensor(0.3)).shape == x.shape  # a scalar t broadcasts over the batch
    with pytest.raises(ValueError, match="divisible"):
        latent(torch.randn(1, 4, 6, 6), torch.rand(1))


def test_unet_depends_on_t_and_context_but_not_masked_tokens():
    torch.manual_seed(0)
    net = wake(tiny_unet(4, (1, 2, 2), context_dim=12)).eval()
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 12)
    keep = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    t = torch.tensor([0.2, 0.7])
    base = net(x, t, ctx, keep)
    assert not torch.allclose(net(x, t + 0.05, ctx, keep), base, atol=1e-4)
    assert not torch.allclose(net(x, t, ctx + torch.randn_like(ctx), keep), base, atol=1e-4)
    masked = ctx.clone()
    masked[0, 3:] = 100.0
    torch.testing.assert_close(net(x, t, masked, keep), base, atol=1e-5, rtol=1e-5)


def test_unet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = wake(tiny_unet(4, (1, 2), context_dim=12))
    out = net(torch.randn(2, 4, 8, 8), torch.rand(2), torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool))
    (out * torch.randn_like(out)).sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_unet_bf16_autocast_channels_last_matches_fp32():
    torch.manual_seed(0)
    net = wake(tiny_unet(4, (1, 2), context_dim=12)).eval()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.rand(2), torch.randn(2, 3, 12)
    ref = net(x, t, ctx)
    net = net.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x.to(memory_format=torch.channels_last), t, ctx)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert (out.float() - ref).norm() / ref.norm() < 0.05


# ------------------------------------------------------------------------------------------ text encoder
def test_text_encoder_padding_invariance():
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(vocab_size=50, max_len=12, dim=16, depth=2, heads=2)).eval()
    ids = torch.tensor([[1, 7, 9, 4, 2]])
    short_tokens, short_pooled = enc(ids, torch.ones(1, 5, dtype=torch.bool))
    padded = torch.cat([ids, torch.randint(0, 50, (1, 7))], dim=1)  # garbage in the padded slots
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, :5] = True
    tokens, pooled = enc(padded, mask)
    assert tokens.shape == (1, 12, 16) and pooled.shape == (1, 16)
    torch.testing.assert_close(tokens[:, :5], short_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, short_pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, short_tokens.mean(dim=1), atol=1e-5, rtol=1e-5)
    other = ids.clone()
    other[0, 2] = 11
    assert not torch.allclose(enc(other, torch.ones(1, 5, dtype=torch.bool))[0][:, 0], short_tokens[:, 0])
