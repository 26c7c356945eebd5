"""FID / KID: the math against closed forms and torchmetrics, the FID Inception port, the reference cache."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from t2i.errors import UserError
from t2i.eval.fid import (
    FIDInceptionV3,
    InceptionFeatures,
    check_state_dict,
    extract,
    feature_stats,
    fid_from_features,
    frechet_distance,
    images_to_batch,
    kid_from_features,
    load_inception_weights,
    poly_mmd2,
    reference_features,
)


def _features(n=300, d=16, shift=0.0, scale=1.0, seed=0):
    g = np.random.default_rng(seed)
    mix = g.normal(size=(d, d)) / np.sqrt(d)
    return (g.normal(size=(n, d)) @ mix) * scale + shift


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    g = np.random.default_rng(1)
    mu1, mu2 = g.normal(size=8), g.normal(size=8)
    s1, s2 = g.uniform(0.1, 3, size=8), g.uniform(0.1, 3, size=8)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    x = _features()
    assert abs(fid_from_features(x, x)) < 1e-8
    assert fid_from_features(x, x + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)  # a shift moves only the mean


def test_imaginary_square_root_is_an_error():
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1.0, 1.0]))


def test_rank_deficient_covariances_still_give_a_finite_distance():
    x, y = _features(n=5, d=16), _features(n=5, d=16, seed=3)  # fewer images than dimensions
    assert np.isfinite(fid_from_features(x, y)) and fid_from_features(x, y) > 0


class _Identity(nn.Module):
    """Features in, features out: lets torchmetrics' metrics run on precomputed features."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


def test_fid_equals_torchmetrics_on_the_same_features():
    tm = pytest.importorskip("torchmetrics.image.fid")
    real, fake = _features(seed=0), _features(shift=0.3, scale=1.3, seed=1)
    metric = tm.FrechetInceptionDistance(feature=_Identity(16))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    ref = float(metric.compute())
    assert ref > 1.0
    assert fid_from_features(real, fake) == pytest.approx(ref, rel=1e-6)


def test_kid_equals_torchmetrics_on_the_same_features():
    tm = pytest.importorskip("torchmetrics.image.kid")
    real, fake = _features(n=200, seed=0), _features(n=200, shift=0.3, scale=1.3, seed=1)
    # Subsets of the whole set: every random subset is a permutation, so both sides see the same MMD.
    metric = tm.KernelInceptionDistance(feature=_Identity(16), subsets=3, subset_size=200)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    ref_mean, ref_std = (float(v) for v in metric.compute())
    mean, std = kid_from_features(real, fake, subsets=3, subset_size=200)
    assert ref_mean > 0.01
    assert mean == pytest.approx(ref_mean, rel=1e-6)
    assert std == pytest.approx(0.0, abs=1e-12) and ref_std == pytest.approx(0.0, abs=1e-9)


def test_unbiased_mmd_matches_a_direct_double_sum_with_unequal_sizes():
    x, y = _features(n=7, d=3, seed=4), _features(n=5, d=3, shift=1.0, seed=5)

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(a, b) for a in x for b in y) / (7 * 5)
    assert poly_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_subsets_are_seeded_and_spread():
    real, fake = _features(n=100, seed=0), _features(n=100, shift=0.2, seed=1)
    a, b = kid_from_features(real, fake, subsets=10, subset_size=50), kid_from_features(real, fake, subsets=10,
                                                                                       subset_size=50)
    assert a == b and a[1] > 0


def test_fewer_than_two_images_is_a_clear_error():
    with pytest.raises(UserError, match="at least 2"):
        fid_from_features(_features(n=1), _features())
    with pytest.raises(UserError, match="at least 2"):
        kid_from_features(_features(), _features(n=1))
    with pytest.raises(UserError, match="at least 2"):
        feature_stats(np.zeros((1, 4)))


def test_mixed_image_sizes_are_resized_consistently_and_said_so(caplog):
    a, b = Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (32, 32), (200, 30, 30))
    with caplog.at_level(logging.WARNING, logger="t2i.eval"):
        x = images_to_batch([a, b], 48)
    assert x.shape == (2, 3, 48, 48)
    assert "2 sizes" in caplog.text and "resizing every one to 48x48" in caplog.text
    assert torch.allclose(x[0], x[1], atol=1e-5)  # the same flat colour either way
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="t2i.eval"):
        images_to_batch([a, a], 48)
    assert caplog.text == ""


@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_fid_inception_gives_2048_pool_features(inception):
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960  # torchvision: 27,161,264 - AuxLogits 3,326,696 + 8 more fc classes
    with torch.no_grad():
        f = inception(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # pooled ReLU outputs


def test_weights_that_do_not_match_name_the_first_mismatched_key(inception):
    good = inception.state_dict()
    check_state_dict(inception, good, "w.pth")
    old = {k: v for k, v in good.items() if not k.endswith("num_batches_tracked")}
    check_state_dict(inception, old, "old.pth")  # files saved before BatchNorm counted batches still load
    renamed = dict(good)
    renamed["Mixed_5b.branch1x1.conv.weight_x"] = renamed.pop("Mixed_5b.branch1x1.conv.weight")
    with pytest.raises(UserError, match=r"key 'Mixed_5b.branch1x1.conv.weight' is missing"):
        check_state_dict(inception, renamed, "w.pth")
    reshaped = dict(good)
    reshaped["Mixed_7c.branch_pool.bn.bias"] = torch.zeros(7)
    with pytest.raises(UserError, match=r"key 'Mixed_7c.branch_pool.bn.bias' has shape \(7,\), expected \(192,\)"):
        check_state_dict(inception, reshaped, "w.pth")
    extra = {**good, "AuxLogits.fc.weight": torch.zeros(1)}
    with pytest.raises(UserError, match=r"unexpected key 'AuxLogits\.fc\.weight'"):
        check_state_dict(inception, extra, "w.pth")


def test_inception_weights_load_from_a_local_file(inception, tmp_path):
    path = tmp_path / "pt_inception.pth"
    torch.save(inception.state_dict(), path)
    feats = InceptionFeatures(path, device=torch.device("cpu"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(feats(x), inception(x))
    assert feats.key.startswith("inception-") and feats.key != "inception-random"
    with pytest.raises(UserError, match="not found"):
        load_inception_weights(FIDInceptionV3(), tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read Inception weights"):
        load_inception_weights(FIDInceptionV3(), tmp_path / "junk.pth")


class _MeanColour:
    key = "meancolour"
    resolution = 16

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x.mean(dim=(2, 3))


def test_reference_features_are_cached_per_dataset_resolution_and_extractor(tmp_path):
    ext = _MeanColour()
    images = [Image.new("RGB", (16, 16), (i * 20, 50, 90)) for i in range(5)]
    a = reference_features("toy-5", 16, ext, lambda: images, cache=tmp_path)
    calls = ext.calls
    b = reference_features("toy-5", 16, ext, lambda: pytest.fail("recomputed a cached reference"), cache=tmp_path)
    assert not a.cached and b.cached and ext.calls == calls
    np.testing.assert_array_equal(a.features, b.features)
    reference_features("toy-5", 32, ext, lambda: images, cache=tmp_path)  # another resolution: recomputed
    assert ext.calls > calls and len(list(tmp_path.glob("*.npz"))) == 2


def test_extract_warns_once_about_mixed_sizes_across_batches(caplog):
    ext = _MeanColour()
    images = [Image.new("RGB", (16, 16), (9, 9, 9))] * 3 + [Image.new("RGB", (32, 32), (9, 9, 9))] * 3
    with caplog.at_level(logging.WARNING, logger="t2i.eval"):
        feats = extract(ext, images, batch_size=3)  # each batch is uniform; the set is not
    assert feats.shape == (6, 3) and caplog.text.count("2 sizes") == 1
