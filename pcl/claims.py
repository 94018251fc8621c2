"""The claims table (T1) and the PIE counts with their noise floor, as PROTOCOL.md ("Claims and how
each is tested") tests them, every interval from :func:`pcl.intervals.seed_interval`.

A row is **not decided** where a confound of PROTOCOL.md ("Design at reduced scale") makes the
comparison unfair; the guards' thresholds are where ``tests/test_claim_simulation.py`` validated
the statistics. Rows with ``decides=False`` are shown for context only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Hashable, Mapping

import numpy as np
import pandas as pd

from . import claim_stats, intervals, metrics
from .claim_stats import MAX_SPLITS, STATISTICS, modes
from .intervals import SeedInterval, seed_interval
from .keys import PopKey

HOLDS, CONTRADICTED, UNCLEAR = "holds", "contradicted", "cannot be told apart"
NOT_DECIDED, TOO_FEW = "not decided", "too few seeds"
VERDICTS = (HOLDS, CONTRADICTED, UNCLEAR, NOT_DECIDED, TOO_FEW)
COLUMNS = ("claim", "comparison", "statistic", "estimate", "ci_low", "ci_high", "interval",
           "verdict", "decides", "note", "scale")
TITLES = {
    1: "1. At high sparsity a contrastive method has more PIEs than CE",
    2: "2. PIEs carry the representation damage",
    3: "3. Early pruning hurts most",
    4: "4. PIEs are largely unique to each learning-and-pruning pair",
}
#: Claim 1 compares methods only when their dense test accuracies are this close (fraction).
MAX_ACCURACY_GAP = 0.02
#: Claim 1's floor-relative row decides only when both noise floors have at least this many PIEs.
MIN_FLOOR = 25
#: Claim 3 needs this many onset begins, every window ending by MAX_ONSET_END of training.
MIN_ONSETS, MAX_ONSET_END = 4, 0.85


def verdict(low: float, high: float, threshold: float = 0.0, greater: bool = True) -> str:
    """The verdict of an interval on a claim that the statistic is above (``greater``) or below
    ``threshold``: holds, contradicted (excluded on the other side) or cannot be told apart."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNCLEAR
    above, below = low > threshold, high < threshold
    holds, contradicted = (above, below) if greater else (below, above)
    return HOLDS if holds else CONTRADICTED if contradicted else UNCLEAR


def _count_statistic(p: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    """[PIEs, floor, PIEs / floor] (floor NaN without a floor population)."""
    d = modes(p["dense"], k)
    pies = (d != modes(p["pruned"], k)).sum(-1)
    if "floor" not in p:
        return np.array([pies, np.nan, np.nan], float)
    fl = (d != modes(p["floor"], k)).sum(-1)
    return np.array([pies, fl, pies / fl if fl else np.nan], float)


def pie_counts(preds: Mapping[PopKey, np.ndarray], num_classes: int, confidence: float = intervals.CONFIDENCE,
               max_subsets: int = intervals.MAX_SUBSETS) -> pd.DataFrame:
    """One row per pruned population: its PIE count, its method's noise floor (PIEs between the dense
    and the floor population) and their ratio, each with a seed interval, and each population's tied votes."""
    rows = []
    for key in sorted(map(PopKey._make, preds)):
        dk, fk = PopKey.dense(key.method), PopKey.floor(key.method)
        if key.is_dense or key.is_floor or dk not in preds:
            continue
        pops = {"dense": preds[dk], "pruned": preds[key], **({"floor": preds[fk]} if fk in preds else {})}
        iv = seed_interval(pops, partial(_count_statistic, k=num_classes), confidence,
                           max_subsets=max_subsets)
        tie = {k: int(metrics.tied_votes(v, num_classes).sum()) for k, v in pops.items()}
        est, lo, hi = iv.estimate, iv.low, iv.high
        rows.append({"method": key.method, "schedule": key.schedule, "sparsity": key.sparsity,
                     "pies": int(est[0]), "ci_low": lo[0], "ci_high": hi[0], "floor": est[1],
                     "floor_ci_low": lo[1], "floor_ci_high": hi[1], "pies_over_floor": est[2],
                     "ratio_ci_low": lo[2], "ratio_ci_high": hi[2], "ties_dense": tie["dense"],
                     "ties_pruned": tie["pruned"], "ties_floor": tie.get("floor", np.nan),
                     "models": len(preds[key]), "dense_models": len(preds[dk]),
                     "floor_models": len(pops.get("floor", ())), "interval": iv.label()})
    return pd.DataFrame(rows)


def pie_count_intervals(preset, store, confidence: float = intervals.CONFIDENCE,
                        max_subsets: int = intervals.MAX_SUBSETS) -> pd.DataFrame:
    """:func:`pie_counts` of every finished population of ``preset`` in ``store``."""
    from .evaluate import population_predictions

    return pie_counts(population_predictions(preset, store), preset.ce.num_classes, confidence, max_subsets)


@dataclass
class Evidence:
    """Everything the claims need, as arrays with models (ordered by seed) on axis 0."""

    preds: dict[PopKey, np.ndarray]
    num_classes: int
    headline: float
    schedules: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    #: Each onset point (evaluate marks them, at the onset sparsity) -> its (begin, end) GMP window.
    onset: dict[PopKey, tuple[float, float]] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)  # method -> mean dense test accuracy (fraction)
    #: Per-model (models, images) Q-Score and prediction depth (the first few models only) of the
    #: dense and headline-sparsity populations.
    qscores: dict[PopKey, np.ndarray] = field(default_factory=dict)
    depths: dict[PopKey, np.ndarray] = field(default_factory=dict)
    reference: str = "ce"
    contrast: tuple[str, str] = ("gmp_early", "gmp_late")  # the schedules of claim 3's non-deciding row
    scale: str = ""
    confidence: float = intervals.CONFIDENCE
    max_subsets: int = intervals.MAX_SUBSETS

    def __post_init__(self) -> None:
        for k, v in self.preds.items():
            if np.ndim(v) != 2 or len(v) < 1:
                raise ValueError(f"predictions of {k} must be (models >= 1, images); got shape {np.shape(v)}")
        self.preds = {PopKey._make(k): v for k, v in self.preds.items()}
        if not self.methods:
            self.methods = tuple(dict.fromkeys(k.method for k in self.preds))
        if not self.schedules:
            self.schedules = tuple(sorted({k.schedule for k in self.preds if not k.is_dense
                                           and not k.is_floor and not k.schedule.startswith("gmp@")}))

    def at_headline(self, method: str, schedule: str) -> PopKey | None:
        """The key of (method, schedule) at the headline sparsity, if it and its dense are present."""
        key = PopKey(method, schedule, self.headline)
        return key if key in self.preds and PopKey.dense(method) in self.preds else None

    def interval(self, pops: Mapping[Hashable, np.ndarray], stat: Callable) -> SeedInterval:
        """:func:`pcl.intervals.seed_interval` at this evidence's settings."""
        return seed_interval(pops, stat, self.confidence, max_subsets=self.max_subsets)


def _row(ev: Evidence, claim: int, comparison: str, statistic: str, iv: SeedInterval, i,
         greater: bool, decides: bool = True, guard: str = "", note: str = "") -> dict:
    """One T1 row; ``guard`` (why a confound makes the row not decided) overrides the verdict, and
    a missing interval (fewer than :data:`pcl.intervals.MIN_UNITS` seeds) overrides both."""
    est, lo, hi = iv[i]
    v = TOO_FEW if not iv.delete else NOT_DECIDED if guard else verdict(lo, hi, greater=greater)
    return {"claim": TITLES[claim], "comparison": comparison, "statistic": statistic,
            "estimate": est, "ci_low": lo, "ci_high": hi, "interval": iv.label(),
            "verdict": v, "decides": decides, "note": "; ".join(x for x in (guard, note) if x),
            "scale": ev.scale}


def accuracy_guard(accuracy: Mapping[str, float], a: str, b: str) -> tuple[str, str]:
    """(guard, note) of claim 1: both dense accuracies, and why the row is not decided when they
    are unknown or differ by more than :data:`MAX_ACCURACY_GAP` (PROTOCOL.md, confound 1)."""
    if a not in accuracy or b not in accuracy:
        return f"dense accuracy of {a} or {b} unknown", ""
    note = f"dense accuracy {a} {100 * accuracy[a]:.1f} %, {b} {100 * accuracy[b]:.1f} %"
    gap = abs(accuracy[a] - accuracy[b])
    if gap > MAX_ACCURACY_GAP + 1e-12:
        return f"dense accuracies {100 * gap:.1f} points apart (> {100 * MAX_ACCURACY_GAP:g})", note
    return "", note


def floor_guard(floor_a: float, floor_b: float) -> str:
    """Why a floor-relative row is not decided: a floor below :data:`MIN_FLOOR` (confound 4)."""
    low = min(floor_a, floor_b)
    return f"noise floor {low:.0f} PIEs < {MIN_FLOOR} (not validated)" if not low >= MIN_FLOOR else ""


def claim_1(ev: Evidence) -> list[dict]:
    """PIEs(method) - PIEs(reference) at the headline sparsity per schedule, raw and relative to
    each method's noise floor on a log scale, for every method other than the reference; every
    row states both dense accuracies and is decided only when they match."""
    rows, r = [], ev.reference
    for m in [m for m in ev.methods if m != r]:
        guard, note = accuracy_guard(ev.accuracy, m, r)
        for sch in ev.schedules:
            km, kr = ev.at_headline(m, sch), ev.at_headline(r, sch)
            if km is None or kr is None:
                continue
            pops = {"dm": ev.preds[PopKey.dense(m)], "pm": ev.preds[km],
                    "dr": ev.preds[PopKey.dense(r)], "pr": ev.preds[kr]}
            fm, fr = PopKey.floor(m), PopKey.floor(r)
            if fm in ev.preds and fr in ev.preds:
                pops.update(fm=ev.preds[fm], fr=ev.preds[fr])
            iv = ev.interval(pops, lambda p: claim_stats.method_statistic(p, ev.num_classes))
            comp = f"{m} vs {r}, {sch} @ {ev.headline}"
            rows.append(_row(ev, 1, comp, f"PIEs({m}) - PIEs({r})", iv, 0, True, guard=guard, note=note))
            if "fm" in pops:
                fguard = guard or floor_guard(iv.estimate[2], iv.estimate[3])
                rows.append(_row(ev, 1, comp, f"log(PIEs/floor) ({m}) - log(PIEs/floor) ({r})",
                                 iv, 1, True, guard=fguard, note=f"{note}; floors "
                                 f"{iv.estimate[2]:.0f} / {iv.estimate[3]:.0f}"))
    return rows


def claim_2(ev: Evidence) -> list[dict]:
    """Per method and schedule at the headline sparsity: mean dense->pruned change of the
    population-mean Q-Score (and prediction depth) over PIEs minus over the other images. Holds
    when PIEs lose more Q-Score (< 0) and gain more depth (> 0)."""
    rows = []
    for m in ev.methods:
        for sch in ev.schedules:
            key = ev.at_headline(m, sch)
            if key is None:
                continue
            dk = PopKey.dense(m)
            pops = {"dp": ev.preds[dk], "pp": ev.preds[key]}
            parts = []
            for name, table, greater in (("Q-Score", ev.qscores, False),
                                         ("prediction depth", ev.depths, True)):
                if dk in table and key in table:
                    pops[f"d{name}"], pops[f"p{name}"] = table[dk], table[key]
                    parts.append((name, greater))
            if not parts:
                continue
            names = tuple(n for n, _ in parts)
            iv = ev.interval(pops, partial(claim_stats.damage_statistic, k=ev.num_classes, names=names))
            for i, (name, greater) in enumerate(parts):
                models = min(len(pops[f"d{name}"]), len(pops[f"p{name}"]))
                rows.append(_row(ev, 2, f"{m} {sch} @ {ev.headline} ({name}: {models} models)",
                                 f"mean d{name}(PIEs) - mean d{name}(others)", iv, i, greater))
    return rows


def onset_guard(windows: list[tuple[float, float]]) -> str:
    """Why an onset sweep cannot decide claim 3 (PROTOCOL.md, confound 2), or ''."""
    begins = len({round(b, 9) for b, _ in windows})
    late = [f"{b:.2f}-{e:.2f}" for b, e in windows if e > MAX_ONSET_END + 1e-9]
    out = [f"{begins} onset begins (needs at least {MIN_ONSETS})"] if begins < MIN_ONSETS else []
    if late:
        out.append(f"windows ending after {MAX_ONSET_END} leave no time to recover: " + ", ".join(late))
    return "; ".join(out)


def claim_3(ev: Evidence) -> list[dict]:
    """Per method: the least-squares slope of the PIE count against the GMP begin fraction over
    the onset sweep (holds when negative), with every point and its interval (shown); the
    early-vs-late contrast at the headline sparsity is shown but does not decide."""
    rows = []
    for m in ev.methods:
        pts = sorted((w, key) for key, w in ev.onset.items()
                     if key.method == m and key in ev.preds and PopKey.dense(m) in ev.preds)
        if not pts:
            continue
        begins = np.array([w[0] for w, _ in pts])
        pops = {"dense": ev.preds[PopKey.dense(m)], **{i: ev.preds[k] for i, (_, k) in enumerate(pts)}}
        iv = ev.interval(pops, lambda p, b=begins: claim_stats.onset_statistic(p, ev.num_classes, b))
        rows.append(_row(ev, 3, f"{m} onset sweep @ {pts[0][1].sparsity} ({len(pts)} begins)",
                         "slope of PIEs vs GMP begin (PIEs per unit of training)", iv, 0, False,
                         guard=onset_guard([w for w, _ in pts])))
        rows += [_row(ev, 3, f"{m} onset window {b:.3g}-{e:.3g} ({key.schedule})",
                      "PIEs at this onset", iv, i + 1, True, decides=False)
                 for i, ((b, e), key) in enumerate(pts)]
    early, late = ev.contrast
    for m in ev.methods:
        ke, kl = ev.at_headline(m, early), ev.at_headline(m, late)
        if ke is None or kl is None:
            continue
        pops = {"dense": ev.preds[PopKey.dense(m)], "early": ev.preds[ke], "late": ev.preds[kl]}
        iv = ev.interval(pops, lambda p: (claim_stats.pie_count(p["dense"], p["early"], ev.num_classes)
                                          - claim_stats.pie_count(p["dense"], p["late"], ev.num_classes)))
        rows.append(_row(ev, 3, f"{m} @ {ev.headline} (windows differ in length: does not decide)",
                         f"PIEs({early}) - PIEs({late})", iv, (), True, decides=False))
    return rows


def claim_4(ev: Evidence) -> list[dict]:
    """Cross-pair PIE-set overlap coefficient against the within-pair split-half overlap at the
    headline sparsity (holds when cross < within); the same per kind of pair, Jaccard, and the
    cross-pair overlap above that of random sets of the same sizes are shown beside it."""
    pairs = [(m, s) for m in ev.methods for s in ev.schedules if ev.at_headline(m, s)]
    pops = {("dense", m): ev.preds[PopKey.dense(m)] for m, _ in pairs}
    pops.update({p: ev.preds[PopKey(*p, ev.headline)] for p in pairs})
    n_pairs = sum(key[0] != "dense" for key in pops)
    if n_pairs < 2:
        return []
    iv = ev.interval(pops, lambda p: claim_stats.pair_statistic(p, ev.num_classes))
    e = iv.estimate
    h = min(len(v) for v in pops.values()) // 2
    where = f"{n_pairs} pairs @ {ev.headline}, halves of {h} seed{'s' * (h != 1)}"
    note = (f"overlap coefficient within {e[3]:.3f}, cross {e[4]:.3f}; "
            f"Jaccard within {e[7]:.3f}, cross {e[8]:.3f}")
    rows = [_row(ev, 4, where, STATISTICS[0], iv, 0, False, note=note)]
    rows += [_row(ev, 4, STATISTICS[i], STATISTICS[0], iv, i, False, decides=False)
             for i in (1, 2) if np.isfinite(e[i])]
    chance = "cross-pair overlap above chance (the floor)"
    return rows + [_row(ev, 4, where, STATISTICS[6], iv, 6, False, decides=False),
                   _row(ev, 4, chance, STATISTICS[5], iv, 5, True, decides=False)]


def overlap_matrix(preds: Mapping[PopKey, np.ndarray], num_classes: int, sparsity: float,
                   schedules: tuple[str, ...] | None = None, max_splits: int = MAX_SPLITS
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(overlap coefficient, Jaccard) between the PIE sets of every pruned configuration at
    ``sparsity`` (figure F4), as DataFrames indexed by 'method schedule'. Every entry compares
    disjoint halves of the seeds, so the diagonal is each configuration's split-half
    reproducibility and off-diagonal entries are comparable with it (claim 4's statistic)."""
    keys = [k for k in map(PopKey._make, preds) if not (k.is_dense or k.is_floor) and k.sparsity == sparsity
            and PopKey.dense(k.method) in preds and (schedules is None or k.schedule in schedules)]
    if not keys:
        raise ValueError(f"no pruned population at sparsity {sparsity}; "
                         f"have {sorted({k[2] for k in preds})}")
    dense = {k.method: preds[PopKey.dense(k.method)] for k in keys}
    oc, jac, _ = claim_stats.split_overlaps(dense, {(k.method, k.schedule): preds[k] for k in keys},
                                            num_classes, max_splits)
    names = [f"{k.method} {k.schedule}" for k in keys]
    return tuple(pd.DataFrame(x, index=names, columns=names) for x in (oc, jac))


CLAIMS: list[Callable[[Evidence], list[dict]]] = [claim_1, claim_2, claim_3, claim_4]


def run_claims(ev: Evidence, claims: list[Callable[[Evidence], list[dict]]] | None = None) -> pd.DataFrame:
    """T1: the rows of every claim function (default :data:`CLAIMS`) on ``ev``."""
    rows = [r for fn in (CLAIMS if claims is None else claims) for r in fn(ev)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def load_evidence(preset, store, data=None, confidence: float = intervals.CONFIDENCE,
                  max_subsets: int = intervals.MAX_SUBSETS) -> Evidence:
    """The arrays every claim needs, from a run store: predictions of every finished population,
    dense accuracies, the onset points (evaluate's) with their windows, per-model Q-Scores of the
    dense and headline-sparsity populations, and (with ``data``, the study's dataset) per-model
    prediction depth of their first ``preset.pd_models`` models from the cached k-NN probes."""
    from . import evaluate

    pops = evaluate.populations(preset, store)
    preds = {key: evaluate.predictions(store, cfgs) for key, cfgs in pops.items()}
    runs = evaluate.study_table("runs", preset, store)  # cached: notebook 04 built it
    accuracy = runs[runs.schedule == "dense"].groupby("method").test_acc.mean().to_dict()
    begins = evaluate.onset_begins(preset)
    onset = {key: cfgs[0].gmp_window for key, cfgs in pops.items()
             if key.schedule in begins and key.sparsity == preset.onset_sparsity}
    damage = [key for key in pops if key.is_dense
              or (key.sparsity == preset.headline_sparsity and key.schedule in preset.schedules)]
    qscores = {key: np.stack([metrics.q_score(store.load_features(c).numpy()) for c in pops[key]])
               for key in damage}
    depths = {key: np.stack([metrics.prediction_depth(
                 evaluate.probe_predictions(c, store, data, preset.knn_k, preset.pd_train_images),
                 store.load_logits(c).argmax(1).numpy()) for c in pops[key][:preset.pd_models]])
              for key in damage} if data is not None else {}
    return Evidence(preds=preds, num_classes=preset.ce.num_classes,
                    headline=preset.headline_sparsity, schedules=tuple(preset.schedules),
                    methods=tuple(m for m in preset.methods if any(k.method == m for k in preds)),
                    onset=onset, accuracy=accuracy, qscores=qscores, depths=depths,
                    scale=preset.label(), confidence=confidence, max_subsets=max_subsets,
                    reference=preset.reference, contrast=preset.contrast)


def claims_table(preset, store, data=None, confidence: float = intervals.CONFIDENCE,
                 max_subsets: int = intervals.MAX_SUBSETS) -> pd.DataFrame:
    """T1 of a study: :func:`run_claims` on :func:`load_evidence` (prediction depth only with ``data``)."""
    return run_claims(load_evidence(preset, store, data, confidence, max_subsets))
