import pytest
import torch

from t2i.nn.dit import DiT, DiTConfig
from t2i.nn.unet import UNet, UNetConfig


def _wake(model):
    """Zero-initialised gates make a fresh model output zero; give them small values to test dependencies."""
    torch.manual_seed(1)
    for p in model.parameters():
        if p.abs().sum() == 0:
            p.data.normal_(0, 0.05)
    return model


def test_dit_shapes_zero_init_and_conditioning():
    cfg = DiTConfig(4, 4, input_size=8, patch=2, dim=32, depth=2, heads=2, context_dim=16, pooled_dim=16)
    model = DiT(cfg)
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3)
    ctx, mask, pooled = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool), torch.randn(3, 16)
    assert torch.equal(model(x, t, ctx, mask, pooled), torch.zeros(3, 4, 8, 8))
    _wake(model)
    out = model(x, t, ctx, mask, pooled)
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, t + 0.3, ctx, mask, pooled))
    assert not torch.allclose(out, model(x, t, ctx.flip(0), mask, pooled))
    assert not torch.allclose(out, model(x, t, ctx, mask, pooled.flip(0)))
    masked = mask.clone()
    masked[:, 3:] = False
    ctx2 = ctx.clone()
    ctx2[:, 3:] = 100.0
    torch.testing.assert_close(model(x, t, ctx, masked, pooled), model(x, t, ctx2, masked, pooled))
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dit_patches_are_local():
    """With no blocks to mix tokens, changing one latent cell changes only the output of its own patch."""
    model = _wake(DiT(DiTConfig(4, 4, input_size=8, patch=2, dim=32, depth=0, heads=2)))
    x = torch.randn(1, 4, 8, 8)
    y = x.clone()
    y[0, :, 0, 0] += 1.0
    same_t = torch.tensor([0.5])
    d = (model(x, same_t) - model(y, same_t)).abs().sum(1)[0]
    assert d[:2, :2].sum() > 0
    assert d[2:, :].sum() == 0 and d[:, 2:].sum() == 0


def test_unet_pooled_conditioning():
    unet = _wake(UNet(UNetConfig(4, 4, channels=16, channel_mult=(1, 2), attention_levels=(1,), heads=2,
                                 context_dim=8, pooled_dim=8)))
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.rand(2), torch.randn(2, 3, 8)
    a = unet(x, t, ctx, pooled=torch.zeros(2, 8))
    b = unet(x, t, ctx, pooled=torch.ones(2, 8))
    assert not torch.allclose(a, b)


def test_sincos_positions_encode_row_and_column_distance():
    """A sin-cos table makes cells that are close on the grid close in embedding, on both axes alike."""
    from t2i.nn.dit import sincos_2d

    grid = 4
    table = sincos_2d(grid, 64)
    assert table.shape == (grid * grid, 64)
    dist = torch.cdist(table, table)
    cell = lambda r, c: r * grid + c  # noqa: E731
    assert dist[cell(0, 0), cell(0, 1)] < dist[cell(0, 0), cell(0, 3)]
    assert dist[cell(0, 0), cell(1, 0)] < dist[cell(0, 0), cell(3, 0)]
    torch.testing.assert_close(dist[cell(0, 0), cell(0, 2)], dist[cell(0, 0), cell(2, 0)])
    assert len({tuple(row.tolist()) for row in table}) == grid * grid  # every cell distinct


def test_dit_pos_init_options():
    from t2i.nn.dit import sincos_2d

    model = DiT(DiTConfig(4, 4, input_size=8, patch=2, dim=32, depth=1, heads=2, pos_init="sincos"))
    torch.testing.assert_close(model.pos.data[0], sincos_2d(4, 32))
    assert model.pos.requires_grad  # a starting point, still learned
    with pytest.raises(ValueError, match="random or sincos"):
        DiT(DiTConfig(4, 4, input_size=8, patch=2, dim=32, depth=1, heads=2, pos_init="rope"))
