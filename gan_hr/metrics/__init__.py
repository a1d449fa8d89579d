"""Image-quality metrics by name, for the evaluate pipeline and the trainer.

Every entry is called as ``metric(real, fake, **options)`` where ``real`` and ``fake`` are uint8
[N, 3, H, W] images (one tensor or an iterable of batches), and returns a flat dict of floats.
The Inception metrics also need ``features=InceptionFeatures(weights_path, device=...)``; call
``inception_metrics`` directly to get FID and KID from one pass of the network.
"""

from collections.abc import Callable
from functools import partial

from gan_hr.metrics.fid import (
    InceptionFeatures,
    MissingInceptionWeights,
    RealStatistics,
    frechet_distance,
    inception_metrics,
    kid,
    real_statistics,
    resolve_inception_weights,
    stats_cache_key,
)
from gan_hr.metrics.swd import compute_swd

MetricFn = Callable[..., dict[str, float]]

METRICS: dict[str, MetricFn] = {
    "swd": compute_swd,
    "fid": partial(inception_metrics, metrics=("fid",)),
    "kid": partial(inception_metrics, metrics=("kid",)),
}

# Metrics that need the local Inception weights file (and a `features=` option).
NEEDS_INCEPTION = frozenset({"fid", "kid"})


__all__ = [
    "METRICS",
    "NEEDS_INCEPTION",
    "InceptionFeatures",
    "MetricFn",
    "MissingInceptionWeights",
    "RealStatistics",
    "compute_swd",
    "frechet_distance",
    "inception_metrics",
    "kid",
    "real_statistics",
    "resolve_inception_weights",
    "stats_cache_key",
]
