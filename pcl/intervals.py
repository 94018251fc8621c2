"""Intervals that carry seed noise (PROTOCOL.md, "Claims and how each is tested"): a jackknife over
seeds, the one interval method behind every PIE count and every claim (T1).

Row ``j`` of every population (models ordered by seed) is one unit, dropped from the pruned, dense
and floor populations together. A statistic is recomputed on subsets that keep ``n - d`` of the
``n`` units, ``se^2 = (n - d) / d * mean over subsets of (stat(subset) - mean)^2`` and the interval
is ``estimate +/- z * se``. ``d = max(1, n // 4)``: delete-one up to 7 seeds (the study's 5), as
beyond that the delete-one jackknife is inconsistent for modal statistics (step functions of the
votes), its width growing with the seeds (2.6x at 31), and deleting half under-covers ratios. The
estimand is the expectation *at the populations' size* (PIE counts depend on how many models vote).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MAX_SUBSETS = 100
#: Fewer seeds than this get no interval (PROTOCOL.md, confound 5: 3 seeds covered 70-83 %).
MIN_UNITS = 5

Stat = Callable[[Mapping[Hashable, np.ndarray]], Any]


def seed_subsets(n: int, delete: int | None = None, max_subsets: int = MAX_SUBSETS,
                 seed: int = 0) -> np.ndarray:
    """(subsets, n - delete) sorted unit indices that each subset keeps: every subset when there
    are at most ``max_subsets``, else ``max_subsets`` random ones (a fixed generator, so the table is
    reproducible). ``delete`` defaults to a quarter of the seeds, at least one."""
    if n < 2:
        raise ValueError(f"need at least 2 seeds to delete any, got n={n}")
    d = max(1, n // 4) if delete is None else int(delete)
    if not 1 <= d <= n - 1:
        raise ValueError(f"delete must be in 1..{n - 1} for n={n} seeds, got {delete}")
    if max_subsets < 2:
        raise ValueError(f"max_subsets must be >= 2, got {max_subsets}")
    m = n - d
    if math.comb(n, m) <= max_subsets:
        return np.array(list(itertools.combinations(range(n), m)), dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(np.stack([rng.permutation(n)[:m] for _ in range(max_subsets)]), axis=1)


def units(pops: Mapping[Hashable, np.ndarray]) -> int:
    """Seed units: the largest population's number of models (rows)."""
    if not pops:
        raise ValueError("no populations given")
    return max(len(v) for v in pops.values())


def seed_replicates(pops: Mapping[Hashable, np.ndarray], stat: Stat, delete: int | None = None,
                    max_subsets: int = MAX_SUBSETS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(estimate, replicates (subsets, ...), n, d): ``stat`` on all populations and on every
    subset of the seeds. ``stat`` may return a scalar or an array (one interval per element)."""
    n = units(pops)
    est = np.asarray(stat(pops), dtype=float)
    subs = seed_subsets(n, delete, max_subsets, seed)
    # a smaller population (depth: the first few models) keeps the kept rows it has
    kept = ({k: np.asarray(v)[s[s < len(v)]] for k, v in pops.items()} for s in subs)
    reps = np.stack([np.asarray(stat(p), dtype=float) for p in kept])
    if reps.shape[1:] != est.shape:
        raise ValueError(f"stat returned shape {reps.shape[1:]} on a subset but {est.shape} on all")
    return est, reps, n, n - subs.shape[1]


def jackknife_se(reps: np.ndarray, n: int, d: int) -> np.ndarray:
    """Delete-d jackknife standard error from the subset replicates (axis 0); non-finite replicates
    are left out element by element, and with fewer than half of them finite it is NaN."""
    reps = np.asarray(reps, dtype=float)
    ok = np.isfinite(reps)
    cnt = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, reps, 0.0).sum(0) / cnt
        ms = np.where(ok, (reps - mean) ** 2, 0.0).sum(0) / cnt
    return np.where(cnt * 2 >= len(reps), np.sqrt((n - d) / d * ms), np.nan)


@dataclass(frozen=True)
class SeedInterval:
    """Estimate, interval and standard error (arrays shaped like the statistic)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    se: np.ndarray
    n: int  # seed units
    delete: int  # seeds deleted per subset (0: no interval)
    subsets: int
    confidence: float

    def __getitem__(self, i: Any) -> tuple[float, float, float]:
        """(estimate, low, high) of element ``i``."""
        return (float(self.estimate[i]), float(self.low[i]), float(self.high[i]))

    def label(self) -> str:
        """How the tables describe this interval, and what it covers."""
        if not self.delete:
            return f"no interval: too few seeds ({self.n} < {MIN_UNITS})"
        kind = "delete-one" if self.delete == 1 else f"delete-{self.delete}"
        return (f"{self.confidence:.0%} {kind} jackknife over seeds ({self.subsets} subsets of "
                f"{self.n - self.delete}); covers the expected value at {self.n} seeds")


def seed_interval(pops: Mapping[Hashable, np.ndarray], stat: Stat, confidence: float = CONFIDENCE,
                  delete: int | None = None, max_subsets: int = MAX_SUBSETS, seed: int = 0) -> SeedInterval:
    """``stat`` on the populations with a normal interval from the delete-d jackknife over
    seeds (module docstring). Populations are (models, ...) arrays whose rows are seeds in the same
    order; with fewer than :data:`MIN_UNITS` seeds the interval is NaN ("too few seeds")."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = units(pops)
    if n < MIN_UNITS:
        est = np.asarray(stat(pops), dtype=float)
        nan = np.full(est.shape, np.nan)
        return SeedInterval(est, nan, nan, nan, n, 0, 0, confidence)
    return interval(*seed_replicates(pops, stat, delete, max_subsets, seed), confidence)


def interval(estimate: np.ndarray, reps: np.ndarray, n: int, d: int,
             confidence: float = CONFIDENCE) -> SeedInterval:
    """The normal interval ``estimate +/- z * se`` from :func:`seed_replicates`' output, with
    the delete-d jackknife's standard error (:func:`jackknife_se`)."""
    se = jackknife_se(reps, n, d)
    z = stats.norm.ppf(0.5 + confidence / 2)
    return SeedInterval(estimate, estimate - z * se, estimate + z * se, se, n, d, len(reps), confidence)
