"""FID/KID: the maths against direct computations, local-only Inception weights, the stats cache."""

from __future__ import annotations

import math
import os
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from gan_hr.metrics import METRICS, NEEDS_INCEPTION
from gan_hr.metrics.fid import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_NAME,
    INCEPTION_WEIGHTS_URL,
    InceptionFeatures,
    MissingInceptionWeights,
    feature_statistics,
    frechet_distance,
    inception_metrics,
    kid,
    real_statistics,
    resolve_inception_weights,
    stats_cache_key,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every way these libraries could fetch a file fails the test, and is recorded."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    attempts: list[str] = []

    def refuse(name):
        def blocked(*args, **kwargs):
            attempts.append(name)
            raise AssertionError(f"network access attempted through {name}")

        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse("urlopen"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse("torch.hub.load_state_dict_from_url"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse("torch.hub.download_url_to_file"))
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse("torch_fidelity download"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    yield
    assert attempts == []


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A state dict with exactly the keys of the FID Inception (torchvision layout), random values.

    He-normal convolutions keep activations O(1), so features differ between images.
    """
    from torchvision.models import inception_v3

    state = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).state_dict()
    g = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if key.endswith("conv.weight"):
            state[key] = torch.randn(value.shape, generator=g) * math.sqrt(2 / value[0].numel())
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(state, path)
    return path


def test_weights_file_is_the_one_torch_fidelity_uses() -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert INCEPTION_WEIGHTS_URL == URL_INCEPTION_V3
    assert INCEPTION_WEIGHTS_URL.endswith("/" + INCEPTION_WEIGHTS_NAME)


def test_missing_weights_say_what_to_get_and_how_to_pass_it() -> None:
    with pytest.raises(MissingInceptionWeights) as caught:
        InceptionFeatures()
    message = str(caught.value)
    for part in (INCEPTION_WEIGHTS_NAME, INCEPTION_WEIGHTS_URL, "--inception-weights", INCEPTION_WEIGHTS_ENV):
        assert part in message


def test_nonexistent_weights_file_is_refused(tmp_path: Path, monkeypatch) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(MissingInceptionWeights, match="nowhere.pth"):
        InceptionFeatures(missing)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(missing))
    with pytest.raises(MissingInceptionWeights, match="nowhere.pth"):
        InceptionFeatures()


def test_weights_path_from_argument_or_environment(tmp_path: Path, monkeypatch) -> None:
    from_env, from_arg = tmp_path / "env.pth", tmp_path / "arg.pth"
    from_env.write_bytes(b"x")
    from_arg.write_bytes(b"x")
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(from_env))
    assert resolve_inception_weights() == from_env
    assert resolve_inception_weights(from_arg) == from_arg


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_weights_that_are_not_a_plain_state_dict_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    pickled = tmp_path / "pickled.pth"
    torch.save({"payload": _RunsCodeWhenUnpickled(marker)}, pickled)
    with pytest.raises(ValueError, match="not a plain PyTorch state dict"):
        InceptionFeatures(pickled)
    assert not marker.exists()

    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match="does not hold FID Inception-v3 weights"):
        InceptionFeatures(wrong)


def test_random_weights_load_from_the_path_and_give_pool_features(random_weights: Path) -> None:
    extractor = InceptionFeatures(random_weights)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = extractor(images)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert not torch.equal(features[0], features[1])


def _random_covariance(dim: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_frechet_distance_matches_scipy_sqrtm() -> None:
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    s1, s2 = _random_covariance(64, g), _random_covariance(64, g)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = ((mu1 - mu2) ** 2).sum().item() + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy()) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_stays_real_with_fewer_samples_than_dimensions() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 64, generator=g), torch.randn(10, 64, generator=g) + 1.0
    same = frechet_distance(*feature_statistics(a), *feature_statistics(a))
    shifted = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert abs(same) < 1e-9
    assert math.isfinite(shifted) and shifted > 10.0


def test_feature_statistics_match_numpy() -> None:
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(x)
    assert np.allclose(mu.numpy(), x.numpy().mean(axis=0), atol=1e-7)
    assert np.allclose(sigma.numpy(), np.cov(x.numpy(), rowvar=False), atol=1e-7)


def _mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out term by term."""
    m, d = x.shape

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_unbiased_mmd_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 5, generator=g, dtype=torch.float64), torch.randn(20, 5, generator=g, dtype=torch.float64)
    # One subset holding every vector: the estimate no longer depends on the sampling.
    mean, std = kid(x, y + 0.3, subsets=1, subset_size=20)
    assert mean == pytest.approx(_mmd2_reference(x.numpy(), y.numpy() + 0.3), rel=1e-9)
    assert std == 0.0


def test_kid_near_zero_for_identical_sets_and_positive_for_shifted_ones() -> None:
    # Subsets of one finite set share a vector with probability 1/N, which biases the estimate by
    # about -2 (k(x, x) - k(x, x')) / N: -0.035 at N = 400, -0.007 at N = 2000.
    x = torch.randn(2000, 32, generator=torch.Generator().manual_seed(0))
    same_mean, _ = kid(x, x, subsets=50, subset_size=200)
    shifted_mean, shifted_std = kid(x, x + 0.3, subsets=50, subset_size=200)
    assert shifted_mean > 5 * shifted_std > 0
    assert abs(same_mean) < 0.05 * shifted_mean
    assert kid(x, x + 0.6, subsets=50, subset_size=200)[0] > 2 * shifted_mean
    assert kid(x, x + 0.3, subsets=50, subset_size=200) == (shifted_mean, shifted_std)


def _channel_means(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=(2, 3))


def test_real_statistics_gather_and_cache(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g) for _ in range(3)]

    def two_ranks(features: torch.Tensor) -> torch.Tensor:
        return torch.cat([features, features + 1])

    cache = tmp_path / "stats" / "real.pt"
    stats = real_statistics(_channel_means, batches, cache, gather=two_ranks)
    assert stats.features.shape == (24, 3)
    assert torch.allclose(stats.mu, stats.features.double().mean(dim=0))
    assert cache.is_file() and [p.name for p in cache.parent.iterdir()] == ["real.pt"]

    def untouchable():
        raise AssertionError("a cached real set must not be read again")
        yield

    cached = real_statistics(_channel_means, untouchable(), cache)
    for fresh, loaded in zip(stats, cached):
        assert torch.equal(fresh, loaded)


def test_inception_metrics_and_registry() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=g)
    fake = torch.randn(300, 8, generator=g) + 0.5

    def identity(x):
        return x

    both = inception_metrics(real.split(100), fake.split(100), features=identity, kid_subsets=20, kid_subset_size=100)
    assert set(both) == {"fid", "kid", "kid_std"}
    assert both["fid"] > 1.0 and both["kid"] > 0
    assert inception_metrics(real, real, features=identity, metrics=("fid",))["fid"] == pytest.approx(0, abs=1e-9)

    assert set(METRICS) == {"swd", "fid", "kid"} and NEEDS_INCEPTION == {"fid", "kid"}
    assert METRICS["fid"](real, fake, features=identity) == {"fid": both["fid"]}
    kid_only = METRICS["kid"](real, fake, features=identity, kid_subsets=5, kid_subset_size=50)
    assert set(kid_only) == {"kid", "kid_std"}


def test_stats_cache_key_tracks_data_resolution_weights_and_count(tmp_path: Path) -> None:
    weights, other_weights = tmp_path / "a.pth", tmp_path / "b.pth"
    weights.write_bytes(b"weights")
    other_weights.write_bytes(b"other weights")
    manifest = {"num_images": 10, "shards": {"64": [{"path": "64/shard-000000.tar", "count": 10}]}}
    key = stats_cache_key(manifest, 64, weights)
    assert len(key) == 16 and key == stats_cache_key(dict(reversed(list(manifest.items()))), 64, weights)
    variants = {
        stats_cache_key({**manifest, "num_images": 11}, 64, weights),
        stats_cache_key(manifest, 32, weights),
        stats_cache_key(manifest, 64, other_weights),
        stats_cache_key(manifest, 64, weights, num_images=5),
    }
    assert key not in variants and len(variants) == 4
