"""FID and KID with a pluggable feature extractor, computed the way the reference implementations do.

* Fréchet distance (Heusel et al. 2017) between Gaussians fitted to two feature sets:
  ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))``, in float64, with `scipy.linalg.sqrtm`; when the product
  is singular, eps is added to both diagonals and the root retried; an imaginary part larger than 1e-3 on the
  root's diagonal is an error (numerical trouble), a smaller one is dropped. This is pytorch-fid's
  `calculate_frechet_distance` step for step, so numbers are comparable with it.
* KID (Bińkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets (mean and std reported), as in torchmetrics'
  `KernelInceptionDistance`. Unlike FID it is unbiased, so it is the better number at a few hundred images.

Feature extractors (`FeatureExtractor`): the lab CLIP's image tower (`ClipFeatures`, the default on lab
data, where an ImageNet network sees nothing it knows) and the standard FID Inception network
(`InceptionFeatures`: the 2015-12-05 TensorFlow graph as ported by pytorch-fid, 2048-d pool features),
built here and loaded from a local weights file, since nothing can be downloaded. FID numbers are only
comparable between papers when they use the Inception extractor.

Reference statistics (features of the real images) are cached per dataset, resolution and extractor under
`cache_dir()`, so evaluating ten checkpoints computes them once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import linalg
from torch import Tensor, nn
from tqdm import tqdm

from t2i.errors import UserError

log = logging.getLogger("t2i.eval")


# ---------------------------------------------------------------------------------------------- math
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), pytorch-fid's way (float64)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise UserError(f"feature statistics do not match: means {mu1.shape} vs {mu2.shape}, covariances "
                        f"{sigma1.shape} vs {sigma2.shape}; compute both with the same feature extractor")
    diff = mu1 - mu2
    with np.errstate(all="ignore"):
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        log.warning("FID: singular covariance product; adding %g to the diagonals (fewer images than feature "
                    "dimensions make this likely)", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in the matrix square "
                             "root; the covariances are numerically unusable (use more images)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _check_features(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    if x.ndim != 2:
        raise UserError(f"{what} features must be a 2-D (images, dims) array, got shape {x.shape}")
    if len(x) < 2:
        raise UserError(f"FID/KID need at least 2 {what} images (a covariance from one image is undefined), "
                        f"got {len(x)}; evaluate more images")
    return x


def feature_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of (N, D) features, float64."""
    f = _check_features(features, "the")
    return f.mean(axis=0), np.cov(f, rowvar=False)


SMALL_SAMPLE = 1000  # below this many images FID's bias dominates differences between models


def fid_from_features(real: Any, fake: Any) -> float:
    """FID between two (N, D) feature sets. FID is biased upward at small N (the covariance estimate's
    error adds to it), so a figure from a few hundred images is comparable only to one from as many; the
    warning says so where it is easy to miss."""
    real, fake = _check_features(real, "real"), _check_features(fake, "generated")
    n = min(len(real), len(fake))
    if n < SMALL_SAMPLE:
        log.warning("FID from %d images is biased upward and noisy; compare it only with FIDs of the same number of "
                    "images (>= %d for a usable figure, 10,000+ is the papers' custom)", n, SMALL_SAMPLE)
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def poly_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> float:
    """Unbiased MMD^2 with k(a, b) = (gamma a.b + coef)^degree, gamma = 1 / dim by default (KID's kernel)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx, k_yy, k_xy = ((a @ b.T * gamma + coef) ** degree for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2 * k_xy.sum() / (m * n))


def kid_from_features(real: Any, fake: Any, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
                      gamma: float | None = None, coef: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """KID: mean and std (population, as torchmetrics) of the unbiased MMD^2 over `subsets` random subsets.

    A subset takes min(subset_size, N_real, N_fake) images from each side without replacement; with fewer
    images than `subset_size` every subset is the whole set, so the std is 0 and `subsets` does not matter.
    """
    real, fake = _check_features(real, "real"), _check_features(fake, "generated")
    if real.shape[1] != fake.shape[1]:
        raise UserError(f"real and generated features differ in width ({real.shape[1]} vs {fake.shape[1]})")
    size = min(subset_size, len(real), len(fake))
    if size == len(real) == len(fake):  # every subset is a permutation of both sets: one MMD says it all
        return poly_mmd2(real, fake, degree, gamma, coef), 0.0
    rng = np.random.default_rng(seed)
    scores = [poly_mmd2(real[rng.permutation(len(real))[:size]], fake[rng.permutation(len(fake))[:size]],
                        degree, gamma, coef) for _ in range(max(subsets, 1))]
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------------------ images
def _warn_if_mixed(images: Sequence[Image.Image] | Tensor, size: int, antialias: bool) -> None:
    if isinstance(images, Tensor):
        return
    sizes = sorted({im.size for im in images})
    if len(sizes) > 1:
        log.warning("images come in %d sizes (%s); resizing every one to %dx%d (bilinear%s)", len(sizes),
                    ", ".join(f"{w}x{h}" for w, h in sizes[:4]), size, size, ", antialiased" if antialias else "")


def images_to_batch(images: Sequence[Image.Image] | Tensor, size: int, antialias: bool = True,
                    warn: bool = True) -> Tensor:
    """PIL images or a (B, 3, H, W) tensor in [-1, 1] -> float (B, 3, size, size) in [-1, 1].

    Every image is resized the same way (bilinear; antialiased unless `antialias=False`, which is
    pytorch-fid's plain `F.interpolate` for the Inception input). Images of mixed sizes are accepted but
    said so: FID is sensitive to resampling, and a mixed set usually means two sources got mixed up."""
    from t2i.images import images_to_tensor

    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"expected (B, 3, H, W) image tensors in [-1, 1], got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
        return x
    if warn:
        _warn_if_mixed(images, size, antialias)
    sizes = {im.size for im in images}
    if not images:
        return torch.empty(0, 3, size, size)
    if len(sizes) == 1:
        return images_to_batch(images_to_tensor(list(images)), size, antialias)
    return torch.cat([images_to_batch(images_to_tensor([im]), size, antialias) for im in images])


class FeatureExtractor(Protocol):
    """What FID/KID need from a network: a stable `key` for the cache, an input size, and features.

    An optional `antialias` attribute (default True) says how inputs are resized to `resolution`."""

    key: str
    resolution: int

    def __call__(self, x: Tensor) -> Tensor:
        """(B, 3, resolution, resolution) in [-1, 1] -> (B, D) features."""
        ...


def extract(extractor: FeatureExtractor, images: Sequence[Image.Image] | Tensor, batch_size: int = 64,
            progress: bool = False, desc: str = "features") -> np.ndarray:
    """(N, D) float64 features of images under an extractor, in batches, with a progress bar."""
    n = len(images)
    antialias = getattr(extractor, "antialias", True)
    _warn_if_mixed(images, extractor.resolution, antialias)  # once for the whole set, not per batch
    feats = []
    with torch.no_grad():
        for i in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress):
            x = images_to_batch(images[i:i + batch_size], extractor.resolution, antialias, warn=False)
            feats.append(extractor(x).double().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 0))


class ClipFeatures:
    """The lab CLIP's image embeddings as FID/KID features, scaled from unit length to length sqrt(D).

    KID's kernel (x.y / D + 1)^3 assumes features of O(1) per dimension (as Inception's are); on unit
    vectors x.y / D is below 1/D and every kernel value is ~1, so KID would be blind. Scaled, x.y / D is
    the cosine. FID scales by D with it (a constant factor, so rankings do not change)."""

    def __init__(self, pipe: Any, run: str | Path | None = None):
        self.pipe, self.resolution = pipe, pipe.resolution
        digest = "untracked"
        if run is not None and (Path(run) / "clip.safetensors").is_file():
            digest = _file_digest(Path(run) / "clip.safetensors")
        self.key = f"clip-{digest}-sqrtd"
        self.scale = math.sqrt(pipe.embed_dim)

    def __call__(self, x: Tensor) -> Tensor:
        return self.pipe.encode_image(x) * self.scale


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------ FID Inception
class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw: Any):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    """TensorFlow's 3x3 average pool, which leaves the zero padding out of the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """`max_pool`: the port's last block pools with max instead of average (a quirk of the TF graph, kept)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """The FID network: torchvision's Inception-v3 layout with pytorch-fid's patches, 1008-way fc (unused).

    Parameter names match pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, so that file loads as is.
    forward: (B, 3, H, W) in [-1, 1] -> (B, 2048) pool features (input resized to 299x299, bilinear).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def check_state_dict(model: nn.Module, state: dict[str, Any], where: str | Path) -> None:
    """Every key of `model` present with its shape, no extra keys; else a UserError naming the first bad key."""
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):  # older checkpoints lack it; it does not affect eval
                continue
            raise UserError(f"{where} does not match the FID Inception network: key {key!r} is missing")
        got = state[key]
        if not isinstance(got, Tensor) or got.shape != value.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise UserError(f"{where} does not match the FID Inception network: key {key!r} has shape {shape}, "
                            f"expected {tuple(value.shape)}")
    extra = [k for k in state if k not in own]
    if extra:
        raise UserError(f"{where} does not match the FID Inception network: unexpected key {extra[0]!r}")


def load_inception_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a local .pth / .safetensors state dict strictly; a mismatch names the first offending key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Inception weights {path} not found; download pt_inception-2015-12-05-6726825d.pth "
                        "(pytorch-fid's release) on a machine with internet and copy it here (docs/eval.md)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read Inception weights {path} ({e}); expected a PyTorch state dict") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    check_state_dict(model, state, path)
    model.load_state_dict({k: v for k, v in state.items()}, strict=False)
    return model


class InceptionFeatures:
    """Standard FID features: 2048-d pool3 of the FID Inception, from a local weights file (or random
    weights with `weights=None`, for tests only: such numbers mean nothing)."""

    resolution = 299
    antialias = False  # pytorch-fid resizes with plain bilinear interpolation

    def __init__(self, weights: str | Path | None, device: torch.device | None = None):
        from t2i import runtime

        self.device = device or runtime.device()
        model = FIDInceptionV3()
        if weights is not None:
            load_inception_weights(model, weights)
            self.key = f"inception-{_file_digest(Path(weights))}"
        else:
            self.key = "inception-random"
        self.model = model.to(self.device).eval().requires_grad_(False)

    def __call__(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.device))


# ----------------------------------------------------------------------------------- reference cache
def cache_dir() -> Path:
    """Where reference statistics live: $T2I_CACHE/refstats, else ~/.cache/t2i/refstats."""
    root = os.environ.get("T2I_CACHE") or Path.home() / ".cache" / "t2i"
    return Path(root) / "refstats"


@dataclass
class Reference:
    """Features of a real image set: enough for FID (via their statistics) and KID (which needs them all)."""

    features: np.ndarray
    key: str
    cached: bool = False


def reference_features(dataset: str, resolution: int, extractor: FeatureExtractor,
                       images: Callable[[], Sequence[Image.Image]], cache: Path | None = None,
                       progress: bool = False) -> Reference:
    """Features of a reference set, computed once per (dataset, resolution, extractor) and cached as .npz.

    `dataset` must name the image set exactly (source, split, seed, count): it is the cache key, together
    with the resolution and the extractor's key (which hashes its weights)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{dataset}-r{resolution}-{extractor.key}")
    path = (cache or cache_dir()) / f"{safe}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return Reference(z["features"], safe, cached=True)
        except (OSError, ValueError, KeyError):
            log.warning("reference cache %s is unreadable; recomputing it", path)
    feats = extract(extractor, list(images()), progress=progress, desc=f"reference features ({dataset})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, features=feats)
    tmp.replace(path)
    return Reference(feats, safe)
