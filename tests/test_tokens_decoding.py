"""Token decoding: filtering, inverse-CDF picks, guidance, KV cache == no cache, MaskGIT schedule and decoding."""

import math

import pytest
import torch

from t2i.errors import UserError
from t2i.families.dalle import DalleTransformer
from t2i.families.dalle import NetConfig as DalleNet
from t2i.families.parti import NetConfig as PartiNet
from t2i.families.parti import PartiTransformer
from t2i.tokens.decoding import (
    DecodeOptions,
    check_options,
    filter_logits,
    guided,
    mask_schedule,
    pick,
    sample_autoregressive,
    sample_parallel,
)


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 0.5]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, True, False, False]]
    assert torch.equal(filter_logits(logits, top_k=10), logits)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[False, True, True, True]]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).sum() == 1  # never empty


def test_pick_is_inverse_cdf():
    probs = torch.tensor([[0.2, 0.8], [0.2, 0.8]])
    assert pick(probs, torch.tensor([0.1, 0.5])).tolist() == [0, 1]


def test_guidance_on_logits():
    def fn(c):
        return c["x"]

    cond, uncond = {"x": torch.tensor([[1.0, 3.0]])}, {"x": torch.tensor([[1.0, 1.0]])}
    assert torch.equal(guided(fn, cond, uncond, 1.0), cond["x"])
    assert torch.equal(guided(fn, cond, uncond, 0.0), uncond["x"])
    assert torch.equal(guided(fn, cond, uncond, 2.0), torch.tensor([[1.0, 5.0]]))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"top_k": 0}, "--top-k must be a positive"),
    ({"top_k": -3}, "--top-k must be a positive"),
    ({"top_p": 0.0}, "--top-p must be in (0, 1]"),
    ({"top_p": 1.5}, "--top-p must be in (0, 1]"),
    ({"temperature": 0.0}, "--temperature must be > 0"),
    ({"temperature": -1.0}, "--temperature must be > 0"),
    ({"guidance": -1.0}, "--guidance must be >= 0"),
    ({"steps": 0}, "--steps must be at least 1"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as e:
        check_options(**kwargs)
    assert "\n" not in str(e.value)


def _dalle():
    torch.manual_seed(0)
    return DalleTransformer(DalleNet(dim=32, depth=2, heads=2), text_vocab=50, text_len=6, codebook_size=16,
                            n_tokens=9).eval()


def _parti():
    torch.manual_seed(0)
    return PartiTransformer(PartiNet(dim=32, depth=2, heads=2, text_depth=1), text_vocab=50, text_len=6,
                            codebook_size=16, n_tokens=9).eval()


@pytest.mark.parametrize("make", [_dalle, _parti])
@pytest.mark.parametrize("opts", [DecodeOptions(), DecodeOptions(guidance=3.0, top_k=5, temperature=0.8),
                                  DecodeOptions(top_p=0.9)])
def test_cached_and_uncached_decoding_give_identical_samples(make, opts):
    net = make()
    ids = torch.randint(3, 50, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    cond = net.prepare(ids, mask)
    uncond = net.prepare(torch.zeros_like(ids), torch.ones_like(mask))
    a = sample_autoregressive(net.next_logits, cond, uncond, 9, [1, 2, 3], opts, net.layers, use_cache=True)
    b = sample_autoregressive(net.next_logits, cond, uncond, 9, [1, 2, 3], opts, net.layers, use_cache=False)
    assert a.shape == (3, 9)
    assert torch.equal(a, b)
    c = sample_autoregressive(net.next_logits, cond, uncond, 9, [4, 5, 6], opts, net.layers)
    assert not torch.equal(a, c)  # another seed, another sample


def test_cached_logits_match_a_full_forward():
    net = _dalle()
    ids, codes = torch.randint(3, 50, (2, 6)), torch.randint(0, 16, (2, 9))
    h = net.body(net.embed(ids, codes[:, :-1]))
    full = net.image_head(h[:, 6:])
    from t2i.nn.attention import KVCache

    caches = [KVCache() for _ in range(net.layers)]
    step = [net.next_logits({"ids": ids}, codes[:, :i], caches) for i in range(9)]
    torch.testing.assert_close(torch.stack(step, dim=1), full, atol=1e-5, rtol=1e-5)


def test_mask_schedule_is_cosine_and_reveals_every_step():
    s = mask_schedule(8, 64)
    assert len(s) == 8 and s[-1] == 0
    assert all(a > b for a, b in zip([64, *s], s, strict=False))
    assert s[3] == math.floor(64 * math.cos(math.pi / 2 * 4 / 8))  # 45: slow start, fast finish
    assert mask_schedule(1, 64) == [0]
    assert mask_schedule(10, 4) == [3, 2, 1, 0, 0, 0, 0, 0, 0, 0]
    with pytest.raises(UserError):
        mask_schedule(0, 64)


def test_parallel_decoding_follows_the_schedule():
    n, mask_id, calls = 16, 10, []

    def masked_logits(cond, tokens):
        calls.append((tokens == mask_id).sum(dim=1).tolist())
        logits = torch.full((tokens.shape[0], n, 10), -10.0)
        logits[:, torch.arange(n), torch.arange(n) % 10] = 10.0  # position i wants code i % 10
        return logits

    out = sample_parallel(masked_logits, {"x": torch.zeros(2)}, None, n, mask_id, [0, 1], DecodeOptions(steps=4))
    assert torch.equal(out, (torch.arange(n) % 10).expand(2, n))
    assert [c[0] for c in calls] == [16, *mask_schedule(4, n)[:-1]]  # one call per step, masks per schedule


def test_parti_cached_logits_match_a_full_forward_and_reuse_the_encoder_keys():
    from t2i.nn.attention import KVCache

    net = _parti()
    ids, mask, codes = torch.randint(3, 50, (2, 6)), torch.ones(2, 6, dtype=torch.bool), torch.randint(0, 16, (2, 9))
    cond = net.prepare(ids, mask)
    full = net.head(net.decoder(net.embed(codes[:, :-1]), cond["context"], cond["context_mask"]))
    caches = [KVCache() for _ in range(net.layers)]
    step = [net.next_logits(cond, codes[:, :i], caches) for i in range(9)]
    torch.testing.assert_close(torch.stack(step, dim=1), full, atol=1e-5, rtol=1e-5)
    assert [c.length for c in caches] == [9] * net.depth + [6] * net.depth  # context keys stored once
