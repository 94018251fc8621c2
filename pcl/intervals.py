"""Intervals that carry seed noise: a delete-d jackknife over seeds (d: a quarter of them, at least
one), the one interval method behind every PIE count and every claim (T1).

The sampling unit is the **seed**: row ``j`` of every population (models ordered by seed) is one
unit, so a pruned population's row ``j`` (the run that started from dense seed ``j``) is dropped
together with the dense population's row ``j``, and the noise-floor population's row ``j`` (seed
``S + j``) with them. A statistic ``stat(populations)`` is recomputed on subsets that keep
``m = n - d`` of the ``n`` units (every subset when there are at most ``max_subsets`` of them,
else ``max_subsets`` random ones), and its standard error is the delete-``d`` jackknife's::

    se^2 = (n - d) / d * mean over subsets of (stat(subset) - mean stat(subsets))^2

with ``d = max(1, n // 4)`` by default: the delete-one jackknife up to 7 seeds, a quarter of the
seeds beyond. The interval is ``estimate +/- z * se`` (normal).

Why this method (PROTOCOL.md, "Claims and how each is tested"). The numbers are from simulated
populations like those of ``tests/test_claims.py`` (60 % accuracy, one pruning flipping 4x more
images than the other, 100-200 replications); "width" is the interval's mean width over 3.92 times
the statistic's standard deviation across replications, for the PIE-count difference and the
floor-relative difference (PIEs / floor) of claim 1:

* resampling seeds with replacement duplicates models, which makes modal labels noisier and
  inflates PIE counts: intervals about 11x too wide (PROTOCOL.md);
* the delete-one jackknife is inconsistent for modal statistics, step functions of the votes
  (like the median): its width grows with the number of seeds, 1.0-1.3x at 5 seeds, 1.2-1.7x at 7,
  1.6-1.9x at 9, 2.2x at 15, 2.6x at 31;
* deleting half of the seeds keeps counts at 1.0-1.2x, but under-covers ratios (PIEs / floor
  0.7-0.8x wide, 82-88 % coverage): in half a population both counts are mostly noise;
* deleting a quarter (at least one): 1.0-1.7x from 5 to 31 seeds (1.1-1.4x at 9-31), the floor
  ratio 1.0-1.4x; coverage 90-97 % at 5 seeds, 95-99.5 % from 7 on; with the effect flipped the
  verdict flips, and with no effect it claims one in at most 5 % of replications. Claim 4's
  split-half overlap difference (``tests/test_claims.py`` runs it end to end): coverage 97-99.5 %,
  width 1.5-1.8x at 5 and 7 seeds.

The estimand is the statistic's expectation *at the populations' size* (PIE counts depend on how
many models vote), i.e. the mean over independent replications of the whole study.
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
MIN_UNITS = 3
#: How every interval is described in the tables.
METHOD = "delete-d jackknife over seeds"

Stat = Callable[[Mapping[Hashable, np.ndarray]], Any]


def default_delete(n: int) -> int:
    """Seeds deleted per subset: a quarter of them, at least one (the delete-one jackknife up to
    7 seeds)."""
    return max(1, n // 4)


def seed_subsets(n: int, delete: int | None = None, max_subsets: int = MAX_SUBSETS,
                 seed: int = 0) -> np.ndarray:
    """(subsets, n - delete) sorted unit indices that each subset keeps.

    Every subset when there are at most ``max_subsets``; else ``max_subsets`` random ones
    (a fixed generator, so the table is reproducible).
    """
    if n < 2:
        raise ValueError(f"need at least 2 seeds to delete any, got n={n}")
    d = default_delete(n) if delete is None else int(delete)
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
    """Number of seed units: the largest population's number of models (rows)."""
    if not pops:
        raise ValueError("no populations given")
    return max(len(v) for v in pops.values())


def keep_rows(pops: Mapping[Hashable, np.ndarray], keep: np.ndarray) -> dict[Hashable, np.ndarray]:
    """Every population restricted to the kept units (a smaller population keeps the kept rows it
    has)."""
    return {k: np.asarray(v)[keep[keep < len(v)]] for k, v in pops.items()}


def seed_replicates(pops: Mapping[Hashable, np.ndarray], stat: Stat, delete: int | None = None,
                    max_subsets: int = MAX_SUBSETS, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(estimate, replicates (subsets, ...), n, d): ``stat`` on all populations and on every
    subset of the seeds. ``stat`` may return a scalar or an array (one interval per element)."""
    n = units(pops)
    est = np.asarray(stat(pops), dtype=float)
    subs = seed_subsets(n, delete, max_subsets, seed)
    reps = np.stack([np.asarray(stat(keep_rows(pops, s)), dtype=float) for s in subs])
    if reps.shape[1:] != est.shape:
        raise ValueError(f"stat returned shape {reps.shape[1:]} on a subset but {est.shape} on all")
    return est, reps, n, n - subs.shape[1]


def jackknife_se(reps: np.ndarray, n: int, d: int) -> np.ndarray:
    """Delete-d jackknife standard error from the subset replicates (axis 0).

    Non-finite replicates are left out element by element; with fewer than half of them finite
    the standard error is NaN.
    """
    reps = np.asarray(reps, dtype=float)
    ok = np.isfinite(reps)
    cnt = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, reps, 0.0).sum(0) / cnt
        ms = np.where(ok, (reps - mean) ** 2, 0.0).sum(0) / cnt
    se = np.sqrt((n - d) / d * ms)
    return np.where(cnt * 2 >= len(reps), se, np.nan)


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

    def scalar(self) -> tuple[float, float, float]:
        """(estimate, low, high) of a scalar statistic."""
        return self[()]

    def label(self) -> str:
        """How the tables describe this interval."""
        return (f"{self.confidence:.0%} {METHOD} ({self.n} seeds, {self.subsets} subsets of "
                f"{self.n - self.delete})" if self.delete else f"no interval ({self.n} seeds)")


def seed_interval(pops: Mapping[Hashable, np.ndarray], stat: Stat,
                  confidence: float = CONFIDENCE, delete: int | None = None,
                  max_subsets: int = MAX_SUBSETS, seed: int = 0) -> SeedInterval:
    """``stat`` on the populations with a normal interval from the delete-d jackknife over
    seeds (module docstring). Populations are (models, ...) arrays whose rows are seeds in the same
    order; with fewer than 3 seeds the interval is NaN (so verdicts cannot be told apart)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = units(pops)
    if n < MIN_UNITS:
        est = np.asarray(stat(pops), dtype=float)
        nan = np.full(est.shape, np.nan)
        return SeedInterval(est, nan, nan, nan, n, 0, 0, confidence)
    est, reps, n, d = seed_replicates(pops, stat, delete, max_subsets, seed)
    se = jackknife_se(reps, n, d)
    z = stats.norm.ppf(0.5 + confidence / 2)
    return SeedInterval(est, est - z * se, est + z * se, se, n, d, len(reps), confidence)
