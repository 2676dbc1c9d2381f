"""Confidence intervals for the course's measured outcomes: a mean over evaluation items, resampled by story."""
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats


class Estimate(NamedTuple):
    """A mean with the low and high ends of its bootstrap confidence interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def mean_ci(values: Sequence[float], clusters: Sequence[Hashable] | None = None, level: float = 0.95,
            resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean of values with a percentile-bootstrap CI; items sharing a cluster (e.g. a story) are resampled together."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"need a flat sequence of at least 2 values, got shape {values.shape}")
    if clusters is None:
        clusters = range(len(values))
    elif len(clusters) != len(values):
        raise ValueError(f"need one cluster label per value: {len(clusters)} labels for {len(values)} values")
    index = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    if len(index) < 2:
        raise ValueError("need at least 2 clusters to resample")
    ids = np.array([index[c] for c in clusters])
    sums, counts = np.bincount(ids, weights=values), np.bincount(ids).astype(float)
    result = stats.bootstrap((sums, counts), lambda s, n, axis=-1: s.sum(axis) / n.sum(axis), paired=True,
                             vectorized=True, confidence_level=level, n_resamples=resamples, method="percentile",
                             rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Estimate(float(values.mean()), float(low), float(high))
