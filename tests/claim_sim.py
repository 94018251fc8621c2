"""Simulated studies that validate the claims' intervals (PROTOCOL.md, "Claims and how each is
tested"): populations of models drawn like the study's, with a known effect, its flip, a null and
the confounds of "Design at reduced scale". Used only by the tests.

Every array is (seeds, replications, images): a whole batch of independent studies at once, which
the claims' statistics (:mod:`pcl.claim_stats`) evaluate per replication in one call.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from pcl import claims

K = 10
SEEDS = 5  # the study's seed count
Z = 3.92  # width of a 95 % normal interval in standard deviations


class Images:
    """Fixed test images: a true class, a confusing class that takes half of a model's errors on
    it, and a difficulty quantile shared by every method (hard images are hard for all)."""

    def __init__(self, n: int, seed: int = 123):
        g = np.random.default_rng(seed)
        self.n = n
        self.y = np.arange(n) % K
        self.confuser = (self.y + 1 + g.integers(0, K - 1, n)) % K
        self.u = g.random(n)
        self.order = g.permutation(n)

    def logit(self, accuracy: float) -> np.ndarray:
        """Per-image logit of being right: Beta quantiles with mean ``accuracy``."""
        p = np.clip(stats.beta.ppf(self.u, 1.5 * accuracy, 1.5 * (1 - accuracy)), 1e-3, 1 - 1e-3)
        return np.log(p / (1 - p))

    def hit(self, count: int, offset: int = 0) -> np.ndarray:
        """The images a pruning hits: ``count`` of a fixed random order, from ``offset``."""
        m = np.zeros(self.n, bool)
        m[self.order[offset:offset + count]] = True
        return m


@dataclass
class Study:
    """Populations of ``seeds`` models in ``reps`` replications of a study on ``images``."""

    images: Images
    reps: int
    rng: np.random.Generator
    seeds: int = SEEDS

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.seeds, self.reps, self.images.n)

    def draw(self, prob: np.ndarray) -> np.ndarray:
        """Predictions: right with probability ``prob``, else the confuser or a random class."""
        r, im = self.rng, self.images
        wrong = np.where(r.random(self.shape) < 0.5, im.confuser, r.integers(0, K, self.shape))
        return np.where(r.random(self.shape) < prob, im.y, wrong).astype(np.int8)

    def dense(self, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, probabilities) of a dense population; each model has its own quality."""
        q = self.images.logit(accuracy) + self.rng.normal(0, 0.3, (self.seeds, self.reps, 1))
        prob = 1 / (1 + np.exp(-q))
        return self.draw(prob), prob

    def pruned(self, dense: np.ndarray, prob: np.ndarray, hit: np.ndarray, factor: float = 0.4,
               pairing: float = 0.5) -> np.ndarray:
        """Pruning that multiplies the chance of being right by ``factor`` on ``hit``: a model
        keeps its dense model's prediction elsewhere with probability ``pairing`` (one-shot-like)
        and is drawn afresh otherwise (GMP-from-scratch-like)."""
        keep = self.rng.random(self.shape) < pairing
        hit_prob = np.where(hit, prob * factor, prob)
        return np.where(keep, np.where(hit, self.draw(hit_prob), dense), self.draw(hit_prob))

    def accuracy(self, preds: np.ndarray) -> np.ndarray:
        """Mean accuracy of a population per replication."""
        return (preds == self.images.y).mean((0, 2))


# ------------------------------------------------------------------------------------------------
# what the validation measures, and its criteria
# ------------------------------------------------------------------------------------------------
@dataclass
class Report:
    """How one statistic's intervals fared over the replications of one scenario."""

    coverage: float  # share of intervals that cover the truth (mean estimate over replications)
    width: float  # mean interval width over Z standard deviations of the estimate
    holds: float
    contradicted: float

    @property
    def decided(self) -> float:
        return self.holds + self.contradicted


def report(est: np.ndarray, low: np.ndarray, high: np.ndarray, greater: bool = True) -> Report:
    """The :class:`Report` of per-replication estimates and intervals."""
    truth = np.nanmean(est)
    v = np.array([claims.verdict(lo, hi, greater=greater) for lo, hi in zip(low, high, strict=True)])
    ok = np.isfinite(low) & np.isfinite(high)  # intervals a guard withheld are not counted
    return Report(coverage=float(np.mean((low[ok] <= truth) & (truth <= high[ok]))),
                  width=float(np.mean(high[ok] - low[ok]) / (Z * np.nanstd(est, ddof=1))),
                  holds=float(np.mean(v == claims.HOLDS)),
                  contradicted=float(np.mean(v == claims.CONTRADICTED)))


#: PROTOCOL.md's criteria, and the power a known effect must be found with.
MIN_COVERAGE, MAX_WIDTH, MAX_FALSE, MIN_POWER = 0.90, 2.0, 0.10, 0.85


def failures(r: Report, expect: str) -> list[str]:
    """The criteria ``r`` fails: coverage, width, and the verdict ``expect``ed: 'holds',
    'contradicted' (found in >= MIN_POWER of replications), 'null' (either verdict in at most
    MAX_FALSE) or 'not holds' (holds in at most MAX_FALSE)."""
    out = []
    if r.coverage < MIN_COVERAGE:
        out.append(f"coverage {r.coverage:.3f} < {MIN_COVERAGE}")
    if r.width > MAX_WIDTH:
        out.append(f"width {r.width:.2f}x > {MAX_WIDTH}x the spread")
    wanted = {"holds": r.holds, "contradicted": r.contradicted}
    if expect in wanted and wanted[expect] < MIN_POWER:
        out.append(f"{expect} in {wanted[expect]:.3f} < {MIN_POWER}")
    if expect == "null" and r.decided > MAX_FALSE:
        out.append(f"false verdicts {r.decided:.3f} > {MAX_FALSE}")
    if expect == "not holds" and r.holds > MAX_FALSE:
        out.append(f"false holds {r.holds:.3f} > {MAX_FALSE}")
    return out
