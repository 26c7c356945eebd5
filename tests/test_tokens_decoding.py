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
    Guide,
    check_decoding,
    filter_logits,
    mask_schedule,
    pick,
    sample_autoregressive,
    sample_parallel,
)
from t2i.tokens.patches import PatchEmbedding, PatchHead, from_patches, to_patches


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
    cond, uncond = {"x": torch.tensor([[1.0, 3.0]])}, {"x": torch.tensor([[1.0, 1.0]])}
    off = Guide(cond, uncond, 1.0)
    assert off.cond is cond and torch.equal(off.mix(off.cond["x"]), cond["x"])
    for g, want in ((0.0, uncond["x"]), (2.0, torch.tensor([[1.0, 5.0]]))):
        guide = Guide(cond, uncond, g)
        assert guide.cond["x"].shape == (2, 2) and guide.rows(torch.zeros(1, 3)).shape == (2, 3)
        assert torch.equal(guide.mix(guide.cond["x"]), want)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"top_k": 0}, "top_k must be a positive"),
    ({"top_k": -3}, "top_k must be a positive"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": -1.0}, "temperature must be > 0"),
    ({"guidance": -1.0}, "guidance must be >= 0"),
    ({"steps": 0}, "steps must be at least 1"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as e:
        check_decoding(**kwargs)
    assert "\n" not in str(e.value)


def _dalle(patch=1, features=False):
    torch.manual_seed(0)
    codebook = torch.nn.functional.normalize(torch.randn(16, 4), dim=1) if features else None
    return DalleTransformer(DalleNet(dim=32, depth=2, heads=2, patch=patch, code_features=features), text_vocab=50,
                            text_len=6, codebook_size=16, n_tokens=9 if patch == 1 else 16, codebook=codebook).eval()


def _parti(patch=1, features=False):
    torch.manual_seed(0)
    codebook = torch.nn.functional.normalize(torch.randn(16, 4), dim=1) if features else None
    return PartiTransformer(PartiNet(dim=32, depth=2, heads=2, text_depth=1, patch=patch, code_features=features),
                            text_vocab=50, text_len=6, codebook_size=16, n_tokens=9 if patch == 1 else 16,
                            codebook=codebook).eval()


def _sample(net, cond, uncond, seeds, opts, use_cache=True):
    return sample_autoregressive(net.next_state, net.head.slot_logits, cond, uncond, net.positions, net.slots, seeds,
                                 opts, net.layers, use_cache=use_cache)


@pytest.mark.parametrize("make", [_dalle, _parti])
@pytest.mark.parametrize("patch", [1, 2])
@pytest.mark.parametrize("opts", [DecodeOptions(), DecodeOptions(guidance=3.0, top_k=5, temperature=0.8),
                                  DecodeOptions(top_p=0.9)])
def test_cached_and_uncached_decoding_give_identical_samples(make, patch, opts):
    net = make(patch)
    ids = torch.randint(3, 50, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    cond = net.prepare(ids, mask)
    uncond = net.prepare(torch.zeros_like(ids), torch.ones_like(mask))
    a = _sample(net, cond, uncond, [1, 2, 3], opts, use_cache=True)
    b = _sample(net, cond, uncond, [1, 2, 3], opts, use_cache=False)
    assert a.shape == (3, net.positions, patch * patch)
    assert torch.equal(a, b)
    c = _sample(net, cond, uncond, [4, 5, 6], opts)
    assert not torch.equal(a, c)  # another seed, another sample


def _teacher_forced(net, cond, patches):
    """Logits (B, positions, slots, V) of a full forward pass, as training computes them."""
    if isinstance(net, DalleTransformer):
        return net.head(net.body(net.embed(cond["ids"], patches[:, :-1]))[:, 6:], patches)
    return net.head(net.decoder(net.embed(patches[:, :-1]), cond["context"], cond["context_mask"]), patches)


@pytest.mark.parametrize("make", [_dalle, _parti])
@pytest.mark.parametrize(("patch", "features"), [(1, False), (2, False), (1, True), (2, True)])
def test_cached_decoding_steps_match_a_full_forward(make, patch, features):
    """Each cached step's state, read slot by slot as decoding reads it, gives the training forward's logits."""
    from t2i.nn.attention import KVCache

    net = make(patch, features)
    ids, mask = torch.randint(3, 50, (2, 6)), torch.ones(2, 6, dtype=torch.bool)
    codes = torch.randint(0, 16, (2, net.positions * net.slots))
    patches = to_patches(codes, patch)
    cond = net.prepare(ids, mask)
    full = _teacher_forced(net, cond, patches)
    caches = [KVCache() for _ in range(net.layers)]
    steps = []
    for i in range(net.positions):
        h = net.next_state(cond, patches[:, :i], caches)
        steps.append(torch.stack([net.head.slot_logits(h, patches[:, i, :j]) for j in range(net.slots)], dim=1))
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    if isinstance(net, PartiTransformer):  # context keys stored once, self-attention keys once per position
        assert [c.length for c in caches] == [net.positions] * net.depth + [6] * net.depth


def test_patches_round_trip_and_group_neighbours():
    codes = torch.arange(16).reshape(1, 16)  # a 4x4 grid in raster order
    patches = to_patches(codes, 2)
    assert patches[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert torch.equal(from_patches(patches, 2), codes)
    assert torch.equal(to_patches(codes, 1), codes[..., None])
    with pytest.raises(ValueError, match="3x3 patches"):
        to_patches(codes, 3)


def test_patch_embedding_with_one_slot_is_an_embedding_table():
    emb = PatchEmbedding(vocab=8, slots=1, dim=4, specials=2)
    ids = torch.tensor([[0, 7, 8, 9]])
    torch.testing.assert_close(emb(ids[..., None]), emb.weight[ids])
    wide = PatchEmbedding(vocab=8, slots=4, dim=4)
    sos = torch.full((1, 1, 4), 8)  # special 0 in every slot: embedded once
    torch.testing.assert_close(wide(sos)[0, 0], wide.weight[wide.special(0)])
    torch.testing.assert_close(wide(torch.tensor([[[1, 1, 0, 2]]]))[0, 0],
                               wide.weight[[1, 9, 16, 26]].sum(0))  # slot k's code c is row 8k + c


def test_patch_head_slots_see_only_the_codes_before_them():
    torch.manual_seed(0)
    head = PatchHead(dim=8, vocab=5, slots=4)
    h, codes = torch.randn(2, 3, 8), torch.randint(0, 5, (2, 3, 4))
    logits = head(h, codes)
    changed = codes.clone()
    changed[..., 2] = (codes[..., 2] + 1) % 5
    again = head(h, changed)
    torch.testing.assert_close(again[..., :3, :], logits[..., :3, :])  # slots 0-2 do not see slot 2's code
    assert not torch.allclose(again[..., 3, :], logits[..., 3, :])  # slot 3 does


def test_mask_schedule_is_cosine_and_reveals_every_step():
    s = mask_schedule(8, 64)
    assert len(s) == 8 and s[-1] == 0
    assert all(a > b for a, b in zip([64, *s], s, strict=False))
    assert s[3] == math.floor(64 * math.cos(math.pi / 2 * 4 / 8))  # 45: slow start, fast finish
    assert mask_schedule(1, 64) == [0]
    assert mask_schedule(10, 4) == [3, 2, 1, 0, 0, 0, 0, 0, 0, 0]
    with pytest.raises(UserError):
        mask_schedule(0, 64)


@pytest.mark.parametrize("slots", [1, 2])
def test_parallel_decoding_follows_the_schedule(slots):
    n, mask_id, calls = 16, 10, []

    def masked_state(cond, codes):
        calls.append((codes[..., 0] == mask_id).sum(dim=1).tolist())
        assert ((codes == mask_id).all(-1) | (codes != mask_id).all(-1)).all()  # whole positions are masked
        return torch.arange(n, dtype=torch.float).expand(codes.shape[0], n)[..., None]  # the state: its index

    def head(h, chosen):  # position i's slot j wants code (i + j) % 10
        want = (h[..., 0].long() + chosen.shape[-1]) % 10
        return torch.nn.functional.one_hot(want, 10).float() * 20 - 10

    out = sample_parallel(masked_state, head, {"x": torch.zeros(2)}, None, n, slots, mask_id, [0, 1],
                          DecodeOptions(steps=4))
    want = (torch.arange(n)[:, None] + torch.arange(slots)) % 10
    assert torch.equal(out, want.expand(2, n, slots))
    assert [c[0] for c in calls] == [16, *mask_schedule(4, n)[:-1]]  # one call per step, masks per schedule


def test_code_features_relate_codes_through_their_vq_vectors():
    torch.manual_seed(0)
    codebook = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    codebook[1] = codebook[0]  # two codes the quantizer cannot tell apart
    head, emb = PatchHead(dim=8, vocab=5, slots=1, codebook=codebook), PatchEmbedding(5, 1, 8, codebook=codebook)
    with torch.no_grad():
        head.weight[1], head.bias[1] = head.weight[0], head.bias[0]
        emb.weight[1] = emb.weight[0]
        head.query.weight.normal_()
    h = torch.randn(4, 8)
    logits = head.slot_logits(h, torch.zeros(4, 0, dtype=torch.long))
    torch.testing.assert_close(logits[:, 1], logits[:, 0])  # same table rows, same vector: same logits
    assert (logits[:, 2] - logits[:, 0]).abs().min() > 0  # the vectors differ, so do the logits
    e = emb(torch.tensor([[[0]], [[1]], [[2]]]))
    torch.testing.assert_close(e[1], e[0])
    assert not torch.allclose(e[2], e[0])
    assert "codebook" in dict(head.named_buffers()) and "features.codebook" in emb.state_dict()
    e.sum().backward()
    assert emb.features.proj.grad.abs().sum() > 0  # the projection learns from every code it sees


def test_a_patch_that_does_not_tile_the_code_grid_is_a_clear_error():
    from types import SimpleNamespace

    from t2i.codecs.vq import ImageTokenizer, VQConfig
    from t2i.families.parti import Config, Pipeline

    cfg = Config(vq=VQConfig(channels=8, patch=8, codebook_size=16, code_dim=4))
    vq = ImageTokenizer(cfg.vq)  # 64x64 images -> an 8x8 code grid
    cfg.net = PartiNet(dim=16, depth=1, heads=2, text_depth=1, patch=3)
    with pytest.raises(UserError, match=r"net.patch 3 must be a positive divisor of the VQ's 8x8 code grid") as e:
        Pipeline.build_net(cfg, SimpleNamespace(vocab_size=50), vq)
    assert "\n" not in str(e.value)
    cfg.net.patch = 2
    net = Pipeline.build_net(cfg, SimpleNamespace(vocab_size=50), vq)
    assert (net.positions, net.slots) == (16, 4)
