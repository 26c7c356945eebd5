"""The VQ tokenizer: EMA codebook updates, k-means init, dead-code restart, warm-up, usage metric, training."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from t2i.codecs.vq import ImageTokenizer, VectorQuantizer, VQConfig, codebook_usage, reconstruction_error
from t2i.errors import UserError
from t2i.train.data import DataConfig, batches

TINY = VQConfig(channels=16, num_res_blocks=1, codebook_size=32, code_dim=4, warmup_steps=0, kmeans_iters=3)


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_ema_update_moves_codes_to_the_running_mean():
    q = VectorQuantizer(size=2, dim=2, decay=0.9, dead_threshold=0.0)
    q.codebook.copy_(_unit([1, 0], [0, 1]))
    q.embed_sum.copy_(q.codebook)
    q.cluster_size.fill_(1.0)
    flat = _unit([1, 0.2], [1, 0.4], [0.1, 1])
    codes = q.lookup(flat)
    assert codes.tolist() == [0, 0, 1]
    q.ema_update(flat, codes)
    assert torch.allclose(q.cluster_size, torch.tensor([0.9 + 0.1 * 2, 0.9 + 0.1 * 1]))
    expected0 = F.normalize(0.9 * torch.tensor([1.0, 0]) + 0.1 * (flat[0] + flat[1]), dim=0)
    assert torch.allclose(q.codebook[0], expected0, atol=1e-6)
    assert q.codebook[0, 1] > 0  # pulled towards the assigned vectors
    assert torch.allclose(q.codebook.norm(dim=1), torch.ones(2))  # stays on the unit sphere


def test_dead_code_is_restarted_onto_a_badly_quantised_vector():
    q = VectorQuantizer(size=3, dim=2, decay=0.9, dead_threshold=0.5)
    q.codebook.copy_(_unit([1, 0], [0, 1], [-1, 0]))
    q.embed_sum.copy_(q.codebook)
    q.cluster_size.fill_(5.0)
    q.recent.copy_(torch.tensor([5.0, 5.0, 0.1]))  # code 2 has gone unused
    flat = _unit([1, 0], [1, 0.01], [0.7, 0.7])  # (0.7, 0.7) is the only one far from its code
    q.ema_update(flat, q.lookup(flat), torch.Generator().manual_seed(0))
    assert q.restarts == 1
    assert torch.allclose(q.codebook[2], flat[2])  # error-weighted pick: the vector the codebook serves worst
    assert q.recent[2] == 1.0  # grace period
    q.ema_update(flat, q.lookup(flat))
    assert q.lookup(flat[2:3]).item() == 2  # the restarted code now serves that vector


def test_kmeans_init_puts_a_code_on_each_cluster():
    torch.manual_seed(0)
    centres = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0])
    flat = F.normalize(centres.repeat_interleave(50, 0) + 0.05 * torch.randn(200, 3), dim=1)
    q = VectorQuantizer(size=4, dim=3, kmeans_iters=10)
    q.kmeans_init(flat, torch.Generator().manual_seed(1))
    assert bool(q.initialized)
    assigned = q.lookup(centres)
    assert len(set(assigned.tolist())) == 4  # four clusters, four different codes


def test_warmup_passes_features_through_then_quantises():
    q = VectorQuantizer(size=8, dim=4, warmup_steps=2).train()
    z = torch.randn(2, 4, 3, 3)
    before = q.codebook.clone()
    out, _, commit = q(z)
    assert torch.allclose(out, F.normalize(z, dim=1), atol=1e-6) and commit.item() == 0.0
    assert torch.equal(q.codebook, before) and not bool(q.initialized)
    q(z)
    out, codes, _ = q(z)  # third call: k-means init, quantised output
    assert bool(q.initialized)
    assert torch.allclose(out, q.codebook[codes].permute(0, 3, 1, 2), atol=1e-6)


def test_kmeans_clusters_the_last_warmup_batches_when_asked():
    # One batch with 2 vectors for 4 codes cannot place them all; the pooled warm-up batches can.
    centres = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0])
    batches = [centres[i:i + 2].reshape(1, 2, 1, 3).permute(0, 3, 1, 2) for i in (0, 2, 0)]
    pooled, single = VectorQuantizer(size=4, dim=3, warmup_steps=2, kmeans_batches=3).train(), \
        VectorQuantizer(size=4, dim=3, warmup_steps=2).train()
    gen = torch.Generator().manual_seed(0)
    for z in batches:
        pooled(z, gen)
        single(z, gen)
    assert len(set(pooled.lookup(centres).tolist())) == 4 and not pooled._pool
    assert len(set(single.lookup(centres).tolist())) < 4
    with pytest.raises(UserError, match=r"vq\.kmeans_batches must be at least 1"):
        VectorQuantizer(size=4, dim=3, kmeans_batches=0)


def test_straight_through_gradient_reaches_the_encoder_only():
    vq = ImageTokenizer(TINY).train()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    vq.loss(x)["loss"].backward()
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0
    assert not vq.quantizer.codebook.requires_grad


def test_usage_counts_unique_codes_over_the_whole_pass():
    torch.manual_seed(0)
    vq = ImageTokenizer(TINY).eval()
    data = [b["image"] for b in itertools.islice(batches(DataConfig(), 4), 3)]
    codes = torch.cat([vq.encode(x).flatten() for x in data])
    usage = codebook_usage(vq, data)
    assert usage["codes_used"] == codes.unique().numel()
    assert usage["usage"] == pytest.approx(codes.unique().numel() / 32)
    assert 1.0 <= usage["perplexity"] <= usage["codes_used"]
    assert codebook_usage(vq, data[:1])["codes_used"] <= usage["codes_used"]


def test_training_reduces_reconstruction_error_and_keeps_codes_alive():
    torch.manual_seed(0)
    cfg = VQConfig(channels=16, num_res_blocks=1, codebook_size=16, code_dim=4, warmup_steps=5)
    vq = ImageTokenizer(cfg)
    opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
    data = [b["image"] for b in itertools.islice(batches(DataConfig(), 8), 2)]
    vq.eval()
    vq.quantizer.kmeans_init(F.normalize(vq.to_code(vq.encoder(data[0])).permute(0, 2, 3, 1).reshape(-1, 4), dim=1))
    start = reconstruction_error(vq, data)
    vq.quantizer.initialized.fill_(False)
    vq.train()
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        loss = vq.loss(data[i % 2], g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    vq.eval()
    assert reconstruction_error(vq, data) < 0.7 * start
    assert codebook_usage(vq, data)["codes_used"] >= 2
    codes = vq.encode(data[0])
    assert codes.shape == (8, 8, 8) and torch.equal(vq.decode(codes), vq.decode(codes.flatten(1)))
