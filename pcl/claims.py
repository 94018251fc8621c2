"""The claims table (T1): each claim of the paper, measured, with a bootstrap interval and a verdict.

Seed-level uncertainty: a statistic built from PIEs is recomputed on bootstrap resamples of the
seeds of every population involved (each population resampled with replacement, at its own size);
the percentile interval is shifted by the bootstrap's estimate of its bias (see
:func:`seed_bootstrap`).
Image-level statistics (Q-Score, prediction depth) are bootstrapped over test images. A verdict is
'holds' when the whole interval is on the claim's side of its threshold, 'does not hold' when the
whole interval is on the other side, and 'cannot be told apart at this scale' otherwise.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from . import metrics
from .config import Preset
from .evaluate import Key, population_predictions
from .store import RunStore

HOLDS, FAILS, UNCLEAR = "holds", "does not hold", "cannot be told apart at this scale"


def verdict(low: float, high: float, threshold: float = 0.0, greater: bool = True) -> str:
    """Compare a (low, high) interval with ``threshold``; the claim says 'greater' (or less)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNCLEAR
    above, below = low > threshold, high < threshold
    if greater:
        return HOLDS if above else FAILS if below else UNCLEAR
    return HOLDS if below else FAILS if above else UNCLEAR


def seed_bootstrap(preds: dict[Key, np.ndarray], stat: Callable[[dict[Key, np.ndarray]], float],
                   n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
                   ) -> tuple[float, float, float]:
    """(point, low, high): ``stat`` on the populations and a bias-corrected percentile interval
    over resamples of every population's models (rows) with replacement.

    Resampling a small population with replacement duplicates models, which makes modal labels
    noisier and PIE counts larger: the bootstrap distribution of a PIE count sits above the
    estimate. The interval is therefore shifted by the bootstrap estimate of that bias
    (mean of the resamples minus the estimate), the classic bias correction.
    """
    rng = np.random.default_rng(seed)
    point = float(stat(preds))
    vals = np.empty(n_resamples)
    for i in range(n_resamples):
        vals[i] = stat({k: p[rng.integers(0, len(p), len(p))] for k, p in preds.items()})
    a = (1 - confidence) / 2
    bias = float(np.nanmean(vals)) - point
    return (point, float(np.nanquantile(vals, a)) - bias, float(np.nanquantile(vals, 1 - a)) - bias)


def image_bootstrap(values: np.ndarray, groups: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[float, float, float]:
    """(point, low, high) of mean(values[groups]) - mean(values[~groups]) over test images
    (non-finite values dropped), by :func:`pcl.metrics.bootstrap_diff_ci`."""
    values, groups = np.asarray(values, float), np.asarray(groups, bool)
    ok = np.isfinite(values)
    return metrics.bootstrap_diff_ci(values[ok & groups], values[ok & ~groups], n_resamples,
                                     confidence, seed)


def _pies(preds: dict[Key, np.ndarray], key: Key, k: int) -> np.ndarray:
    return metrics.pie_mask(preds[(key[0], "dense", 0.0)], preds[key], k)


def pie_count_intervals(preset: Preset, store: RunStore, n_resamples: int = 500) -> pd.DataFrame:
    """PIE count of every pruned population, with a 95% bootstrap interval over seeds."""
    preds = population_predictions(preset, store)
    k = preset.ce.num_classes
    rows = []
    for key in preds:
        dk = (key[0], "dense", 0.0)
        if key[1] == "dense" or dk not in preds:
            continue
        p, lo, hi = seed_bootstrap({dk: preds[dk], key: preds[key]},
                                   lambda d, key=key: _pies(d, key, k).sum(), n_resamples)
        rows.append({"method": key[0], "schedule": key[1], "sparsity": key[2], "pies": int(p),
                     "ci_low": lo, "ci_high": hi, "models": len(preds[key]),
                     "dense_models": len(preds[dk])})
    return pd.DataFrame(rows)


def claims_table(preset: Preset, store: RunStore, qscores: pd.DataFrame | None = None,
                 depths: pd.DataFrame | None = None, pies: pd.DataFrame | None = None,
                 n_resamples: int = 1000) -> pd.DataFrame:
    """T1: one row per claim and comparison, at the preset's headline sparsity."""
    s = preset.headline_sparsity
    k = preset.ce.num_classes
    preds = population_predictions(preset, store)
    main = [sch for sch in preset.schedules]
    rows = []

    def add(claim: str, comparison: str, stat: str, est, threshold: float, greater: bool,
            interval: str) -> None:
        p, lo, hi = est
        rows.append({"claim": claim, "comparison": comparison, "statistic": stat, "estimate": p,
                     "ci_low": lo, "ci_high": hi, "interval": interval,
                     "verdict": verdict(lo, hi, threshold, greater), "scale": preset.label()})

    # 1. SupCon loses more examples than CE at high sparsity
    for sch in main:
        kc, ks = ("ce", sch, s), ("supcon", sch, s)
        if not all(x in preds for x in (kc, ks, ("ce", "dense", 0.0), ("supcon", "dense", 0.0))):
            continue
        sub = {x: preds[x] for x in (kc, ks, ("ce", "dense", 0.0), ("supcon", "dense", 0.0))}
        est = seed_bootstrap(sub, lambda d: _pies(d, ks, k).sum() - _pies(d, kc, k).sum(),
                             n_resamples)
        add("1. At high sparsity SupCon has more PIEs than CE", f"{sch} @ {s}",
            "PIEs(SupCon) - PIEs(CE)", est, 0.0, True, "95% bootstrap over seeds")

    # 2. PIEs, Q-Score and prediction depth show the damage: PIEs are harder examples
    if depths is not None and pies is not None and len(depths):
        for (m, sch, sp), d in depths.groupby(["method", "schedule", "sparsity"]):
            if sch == "dense":
                continue
            pie = pies[(pies.method == m) & (pies.schedule == sch) & (pies.sparsity == sp)]
            if pie.empty:
                continue
            est = image_bootstrap(d.sort_values("image").depth.to_numpy(),
                                  pie.sort_values("image").pie.to_numpy(), n_resamples)
            add("2a. PIEs sit deeper in the pruned network (prediction depth)", f"{m} {sch} @ {sp}",
                "mean depth(PIEs) - mean depth(others)", est, 0.0, True,
                "95% bootstrap over test images")
    if qscores is not None and pies is not None and len(qscores):
        for sch in main:
            for m in ("ce", "supcon"):
                q = qscores[(qscores.method == m) & (qscores.schedule == sch) & (qscores.sparsity == s)]
                pie = pies[(pies.method == m) & (pies.schedule == sch) & (pies.sparsity == s)]
                if q.empty or pie.empty:
                    continue
                est = image_bootstrap(q.sort_values("image").qscore.to_numpy(),
                                      pie.sort_values("image").pie.to_numpy(), n_resamples)
                add("2b. PIEs have lower Q-Score in the pruned network", f"{m} {sch} @ {s}",
                    "mean Q(PIEs) - mean Q(others)", est, 0.0, False, "95% bootstrap over test images")

    # 3. Early pruning hurts most
    for m in ("ce", "supcon"):
        ke, kl = (m, "gmp_early", s), (m, "gmp_late", s)
        if not all(x in preds for x in (ke, kl, (m, "dense", 0.0))):
            continue
        sub = {x: preds[x] for x in (ke, kl, (m, "dense", 0.0))}
        est = seed_bootstrap(sub, lambda d: _pies(d, ke, k).sum() - _pies(d, kl, k).sum(), n_resamples)
        add("3. Early pruning hurts most", f"{m} @ {s}", "PIEs(gmp_early) - PIEs(gmp_late)", est,
            0.0, True, "95% bootstrap over seeds")

    # 4. The lost examples are largely unique to each method-and-schedule pair
    keys = [x for x in preds if x[2] == s and x[1] in main]
    if len(keys) >= 2 and all((x[0], "dense", 0.0) in preds for x in keys):
        sub = {x: preds[x] for x in keys + [(m, "dense", 0.0) for m in ("ce", "supcon")
                                             if (m, "dense", 0.0) in preds]}

        def mean_jaccard(d):
            masks = [_pies(d, x, k) for x in keys]
            js = [metrics.pie_overlap(masks[i], masks[j])["jaccard"]
                  for i in range(len(masks)) for j in range(i + 1, len(masks))]
            return float(np.mean(js))
        add("4. PIEs are largely unique to each method-and-schedule pair",
            f"{len(keys)} configurations @ {s}", "mean pairwise Jaccard of PIE sets (< 0.5)",
            seed_bootstrap(sub, mean_jaccard, n_resamples), 0.5, False, "95% bootstrap over seeds")
    return pd.DataFrame(rows)


def claims_markdown(t1: pd.DataFrame) -> str:
    """T1 as a Markdown table (for the README and the executed notebook)."""
    lines = ["| claim | comparison | statistic | estimate [95% CI] | verdict |", "|---|---|---|---|---|"]
    for r in t1.itertuples():
        lines.append(f"| {r.claim} | {r.comparison} | {r.statistic} | "
                     f"{r.estimate:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}] | **{r.verdict}** |")
    return "\n".join(lines)
