"""FID and KID on Inception-v3 pool features, from a local weights file only.

The network is torch-fidelity's TensorFlow-compatible Inception-v3 (``inception-v3-compat``), the
one behind published FID numbers: it takes uint8 images of any size and resizes them to 299x299
inside with TF1's bilinear rule. torch-fidelity downloads its weights when it is given no path; we
always give it one and stop before building it when there is none, so nothing here reaches the
network. The metric maths (Fréchet distance, KID) is ours and works on feature tensors, so the
caller decides how features are gathered across processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from gan_hr.sampling import to_uint8

INCEPTION_WEIGHTS_ENV = "GAN_HR_INCEPTION_WEIGHTS"
# The file torch-fidelity 0.4 fetches (URL_INCEPTION_V3 in feature_extractor_inceptionv3.py).
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_NAME}"
FEATURE_DIM = 2048

FeatureFn = Callable[[Tensor], Tensor]
ArrayLike = Tensor | np.ndarray


class MissingInceptionWeights(FileNotFoundError):
    """FID/KID were asked for without a usable local Inception weights file."""


def no_gather(x: Tensor) -> Tensor:
    """The ``gather`` of a single process, which already holds every feature: ``x`` itself."""
    return x


def _missing(reason: str) -> MissingInceptionWeights:
    return MissingInceptionWeights(
        f"{reason}. FID and KID need the standard FID Inception-v3 weights and never download them: "
        f"get {INCEPTION_WEIGHTS_NAME} from {INCEPTION_WEIGHTS_URL} "
        "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth has the same layout and also works), "
        f"then pass it with --inception-weights PATH or set {INCEPTION_WEIGHTS_ENV}=PATH."
    )


def resolve_inception_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """The weights file given, else the one in ``$GAN_HR_INCEPTION_WEIGHTS``; it must exist."""
    chosen = path if path is not None else os.environ.get(INCEPTION_WEIGHTS_ENV) or None
    if chosen is None:
        raise _missing("No Inception weights file was given")
    resolved = Path(chosen).expanduser()
    if not resolved.is_file():
        raise _missing(f"Inception weights file {resolved} does not exist")
    return resolved


class InceptionFeatures:
    """2048-d pool features of uint8 [N, 3, H, W] images (float in [-1, 1] is converted first)."""

    def __init__(self, weights_path: str | os.PathLike[str] | None = None, *, device: torch.device | str = "cpu"):
        self.weights_path = resolve_inception_weights(weights_path)
        blob = self.weights_path.read_bytes()
        try:
            # torch-fidelity loads with weights_only=False; checking first keeps pickled code out.
            torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{self.weights_path} is not a plain PyTorch state dict: {err}") from err
        # Imported here: torch_fidelity pulls in torchvision and more (seconds), only needed for FID.
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            model = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(self.weights_path)
            )
        except RuntimeError as err:
            raise ValueError(f"{self.weights_path} does not hold FID Inception-v3 weights: {err}") from err
        self.device = torch.device(device)
        self.model = model.to(self.device)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        (features,) = self.model(to_uint8(images).to(self.device))
        return features


def compute_features(
    feature_fn: FeatureFn, batches: Tensor | Iterable[Tensor], *, gather: Callable[[Tensor], Tensor] = no_gather
) -> Tensor:
    """Features of every batch of this process, then ``gather``-ed (e.g. ``accelerator.gather_for_metrics``).

    Returns float32 [N, D] on the CPU.
    """
    if isinstance(batches, Tensor):
        batches = [batches]
    local = [feature_fn(batch) for batch in batches]
    if not local:
        raise ValueError("no images given")
    return gather(torch.cat(local)).float().cpu()


def feature_statistics(features: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance (float64), as the reference FID code computes them."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least two feature vectors [N, D], got {tuple(f.shape)}")
    return f.mean(dim=0), torch.cov(f.T)


def _sqrt_eigenvalues(values: Tensor) -> Tensor:
    # Eigenvalues within rounding of zero (or below it) would add sqrt(rounding) each: drop them.
    noise = values.abs().max() * values.numel() * torch.finfo(values.dtype).eps
    return torch.where(values > noise, values, torch.zeros_like(values)).sqrt()


def _sqrt_psd(m: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(m)
    return (vectors * _sqrt_eigenvalues(values)) @ vectors.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    tr((S1 S2)^(1/2)) is taken as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix S1^(1/2) S2 S1^(1/2), which has the same spectrum as S1 S2. Unlike a general matrix square
    root this stays real and stable when covariances are singular (fewer samples than dimensions).
    """
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(x, dtype=torch.float64) for x in (mu1, sigma1, mu2, sigma2))
    sigma1 = (sigma1 + sigma1.T) / 2
    sigma2 = (sigma2 + sigma2.T) / 2
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = _sqrt_eigenvalues(torch.linalg.eigvalsh((middle + middle.T) / 2)).sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def _mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3."""
    m, d = x.shape

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.T / d + 1) ** 3

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    off_diagonal = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return off_diagonal - 2 * k_xy.mean()


def kid(
    feats_real: ArrayLike, feats_fake: ArrayLike, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std of MMD^2 over random subsets.

    Each subset draws ``min(subset_size, N_real, N_fake)`` vectors without replacement from each
    set; the std is the population std over subsets (as torch-fidelity reports it).
    """
    x = torch.as_tensor(feats_real, dtype=torch.float64)
    y = torch.as_tensor(feats_fake, dtype=torch.float64)
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("KID needs at least two feature vectors in each set")
    generator = torch.Generator().manual_seed(seed)
    values = torch.stack(
        [
            _mmd2_unbiased(
                x[torch.randperm(x.shape[0], generator=generator)[:m]],
                y[torch.randperm(y.shape[0], generator=generator)[:m]],
            )
            for _ in range(subsets)
        ]
    )
    return values.mean().item(), values.std(correction=0).item()


class RealStatistics(NamedTuple):
    """What FID and KID need from the real set: mean, covariance (float64) and the features."""

    mu: Tensor
    sigma: Tensor
    features: Tensor


def real_statistics(
    feature_fn: FeatureFn,
    batches: Tensor | Iterable[Tensor],
    cache_path: Path | None,
    *,
    gather: Callable[[Tensor], Tensor] = no_gather,
) -> RealStatistics:
    """Statistics of the real set, read from ``cache_path`` when it exists, else computed and saved.

    Name the cache file after ``stats_cache_key`` so that it cannot be mistaken for other data.
    ``batches`` is not touched on a cache hit. Every process may write: the file is replaced
    atomically with identical content.
    """
    if cache_path is not None and cache_path.is_file():
        cached = torch.load(cache_path, map_location="cpu", weights_only=True)
        return RealStatistics(cached["mu"], cached["sigma"], cached["features"])
    features = compute_features(feature_fn, batches, gather=gather)
    mu, sigma = feature_statistics(features)
    stats = RealStatistics(mu, sigma, features)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_path.parent, prefix=cache_path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(stats._asdict(), f)
            os.replace(tmp, cache_path)
        except BaseException:
            os.unlink(tmp)
            raise
    return stats


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stats_cache_key(
    manifest: Mapping[str, object],
    resolution: int,
    weights_path: str | os.PathLike[str],
    *,
    num_images: int | None = None,
) -> str:
    """Short hash naming a real-statistics cache: the data set, resolution, network and image count."""
    identity = {
        "version": 1,
        "manifest": manifest,
        "resolution": resolution,
        "weights_sha256": _file_sha256(Path(weights_path)),
        "num_images": num_images,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def inception_metrics(
    real: Tensor | Iterable[Tensor],
    fake: Tensor | Iterable[Tensor],
    *,
    features: FeatureFn,
    metrics: Sequence[str] = ("fid", "kid"),
    real_cache: Path | None = None,
    gather: Callable[[Tensor], Tensor] = no_gather,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """FID (``fid``) and/or KID (``kid``, ``kid_std``) from one pass of the feature network.

    ``features`` is usually an ``InceptionFeatures``; ``real`` and ``fake`` are uint8 batches.
    """
    unknown = set(metrics) - {"fid", "kid"}
    if unknown:
        raise ValueError(f"unknown Inception metrics {sorted(unknown)}; choose from fid, kid")
    stats = real_statistics(features, real, real_cache, gather=gather)
    fake_features = compute_features(features, fake, gather=gather)
    result = {}
    if "fid" in metrics:
        result["fid"] = frechet_distance(stats.mu, stats.sigma, *feature_statistics(fake_features))
    if "kid" in metrics:
        result["kid"], result["kid_std"] = kid(
            stats.features, fake_features, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
        )
    return result
