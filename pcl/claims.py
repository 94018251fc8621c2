"""The claims table (T1) and the PIE counts with their noise floor, as PROTOCOL.md tests them.

Every interval here comes from one helper, :func:`pcl.intervals.seed_interval`: a delete-d
jackknife over seeds, which carries seed noise into modal statistics and was validated by
simulation (``tests/test_claims.py``). The populations' models (rows, ordered by seed) are the
sampling unit; every claim statistic is recomputed from the per-model arrays on subsets of the
seeds, PIE masks included.

Verdicts: **holds** when the 95 % interval excludes zero on the claim's side, **contradicted**
when it excludes zero on the other side, **cannot be told apart** otherwise (and whenever there
are fewer than 3 seeds). Rows marked ``decides=False`` are shown for context (the early-vs-late
contrast of claim 3, the overlap floors of claim 4) and do not decide their claim.

The claim functions (:data:`CLAIMS`) take an :class:`Evidence` (arrays, no store) and return
rows; :func:`load_evidence` is the thin loader from a run store.
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping

import numpy as np
import pandas as pd

from . import intervals, metrics
from .intervals import SeedInterval, seed_interval

Key = tuple  # (method, schedule, sparsity)

HOLDS, CONTRADICTED, UNCLEAR = "holds", "contradicted", "cannot be told apart"
VERDICTS = (HOLDS, CONTRADICTED, UNCLEAR)
COLUMNS = ("claim", "comparison", "statistic", "estimate", "ci_low", "ci_high", "interval",
           "verdict", "decides", "scale")
TITLES = {
    1: "1. At high sparsity a contrastive method has more PIEs than CE",
    2: "2. PIEs carry the representation damage",
    3: "3. Early pruning hurts most",
    4: "4. PIEs are largely unique to each learning-and-pruning pair",
}
#: Split-half splits per claim-4 statistic (all of them when there are fewer).
MAX_SPLITS = 20
NOT_PRUNED = ("dense", "floor")


def verdict(low: float, high: float, threshold: float = 0.0, greater: bool = True) -> str:
    """The verdict of an interval for a claim that the statistic is above ``threshold``
    (``greater``) or below it."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNCLEAR
    above, below = low > threshold, high < threshold
    if greater:
        return HOLDS if above else CONTRADICTED if below else UNCLEAR
    return HOLDS if below else CONTRADICTED if above else UNCLEAR


# ------------------------------------------------------------------------------------------------
# PIEs (modal labels, ties and PIE masks are pcl.metrics': one definition for every table)
# ------------------------------------------------------------------------------------------------
def pie_count(dense: np.ndarray, pruned: np.ndarray, num_classes: int) -> int:
    """Number of PIEs between two populations."""
    return int(metrics.pie_mask(dense, pruned, num_classes).sum())


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


# ------------------------------------------------------------------------------------------------
# PIE counts with their noise floor
# ------------------------------------------------------------------------------------------------
def dense_key(key: Key) -> Key:
    """The dense population of ``key``'s method."""
    return (key[0], "dense", 0.0)


def floor_key(key: Key) -> Key:
    """The noise-floor population of ``key``'s method (dense runs with seeds S..2S-1)."""
    return (key[0], "floor", 0.0)


def pie_counts(preds: Mapping[Key, np.ndarray], num_classes: int,
               confidence: float = intervals.CONFIDENCE,
               max_subsets: int = intervals.MAX_SUBSETS) -> pd.DataFrame:
    """One row per pruned population: its PIE count, its method's noise floor (PIEs between
    the dense and the floor population) and their ratio, each with a seed interval, and the number
    of tied modal votes in the dense, the pruned and the floor population."""
    rows = []
    for key in sorted(preds, key=lambda k: (k[0], k[1], float(k[2]))):
        dk, fk = dense_key(key), floor_key(key)
        if key[1] in NOT_PRUNED or dk not in preds:
            continue
        pops = {"dense": preds[dk], "pruned": preds[key]}
        if fk in preds:
            pops["floor"] = preds[fk]

        def stat(p: Mapping[str, np.ndarray]) -> np.ndarray:
            d = metrics.modal_labels(p["dense"], num_classes)
            pies = (d != metrics.modal_labels(p["pruned"], num_classes)).sum()
            if "floor" not in p:
                return np.array([pies, np.nan, np.nan], float)
            fl = (d != metrics.modal_labels(p["floor"], num_classes)).sum()
            return np.array([pies, fl, _ratio(pies, fl)])

        iv = seed_interval(pops, stat, confidence, max_subsets=max_subsets)
        tie = {f"ties_{k}": int(metrics.tied_votes(v, num_classes).sum()) for k, v in pops.items()}
        rows.append({
            "method": key[0], "schedule": key[1], "sparsity": key[2],
            "pies": int(iv.estimate[0]), "ci_low": iv.low[0], "ci_high": iv.high[0],
            "floor": iv.estimate[1], "floor_ci_low": iv.low[1], "floor_ci_high": iv.high[1],
            "pies_over_floor": iv.estimate[2], "ratio_ci_low": iv.low[2],
            "ratio_ci_high": iv.high[2], "ties_dense": tie["ties_dense"],
            "ties_pruned": tie["ties_pruned"], "ties_floor": tie.get("ties_floor", np.nan),
            "models": len(preds[key]), "dense_models": len(preds[dk]),
            "floor_models": len(preds[fk]) if fk in preds else 0, "interval": iv.label()})
    return pd.DataFrame(rows)


def pie_count_intervals(preset, store, confidence: float = intervals.CONFIDENCE,
                        max_subsets: int = intervals.MAX_SUBSETS) -> pd.DataFrame:
    """:func:`pie_counts` of every finished population of ``preset`` in ``store``."""
    from .evaluate import population_predictions

    return pie_counts(population_predictions(preset, store), preset.ce.num_classes, confidence,
                      max_subsets)


# ------------------------------------------------------------------------------------------------
# the evidence the claims are computed from
# ------------------------------------------------------------------------------------------------
@dataclass
class Evidence:
    """Everything the claims need, as arrays with models (ordered by seed) on axis 0.

    ``onset``: population key -> GMP begin fraction of each onset-curve point (the sweep and
    gmp_early, equal durations, at the onset sparsity). ``qscores`` / ``depths``: per-model Q-Score
    and prediction depth (models, images) of the dense and headline-sparsity populations (depth
    only for the first few models). ``contrast``: the schedules of claim 3's non-deciding row.
    """

    preds: dict[Key, np.ndarray]
    num_classes: int
    headline: float
    schedules: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    onset: dict[Key, float] = field(default_factory=dict)
    qscores: dict[Key, np.ndarray] = field(default_factory=dict)
    depths: dict[Key, np.ndarray] = field(default_factory=dict)
    reference: str = "ce"
    contrast: tuple[str, str] = ("gmp_early", "gmp_late")
    scale: str = ""
    confidence: float = intervals.CONFIDENCE
    max_subsets: int = intervals.MAX_SUBSETS

    def __post_init__(self) -> None:
        for k, v in self.preds.items():
            if np.ndim(v) != 2 or len(v) < 1:
                raise ValueError(f"predictions of {k} must be (models >= 1, images); "
                                 f"got shape {np.shape(v)}")
        if not self.methods:
            self.methods = tuple(dict.fromkeys(k[0] for k in self.preds))
        if not self.schedules:
            self.schedules = tuple(sorted({k[1] for k in self.preds if k[1] not in NOT_PRUNED
                                           and not k[1].startswith("gmp@")}))

    def at_headline(self, method: str, schedule: str) -> Key | None:
        """The key of (method, schedule) at the headline sparsity, if it and its dense
        population are present."""
        key = (method, schedule, self.headline)
        return key if key in self.preds and dense_key(key) in self.preds else None

    def interval(self, pops: Mapping[Hashable, np.ndarray], stat: Callable) -> SeedInterval:
        """:func:`pcl.intervals.seed_interval` at this evidence's settings."""
        return seed_interval(pops, stat, self.confidence, max_subsets=self.max_subsets)


def _row(ev: Evidence, claim: int, comparison: str, statistic: str, iv: SeedInterval, i,
         greater: bool, decides: bool = True) -> dict:
    est, lo, hi = iv[i]
    return {"claim": TITLES[claim], "comparison": comparison, "statistic": statistic,
            "estimate": est, "ci_low": lo, "ci_high": hi, "interval": iv.label(),
            "verdict": verdict(lo, hi, greater=greater), "decides": decides, "scale": ev.scale}


# ------------------------------------------------------------------------------------------------
# claim 1: a contrastive method loses more examples than CE at high sparsity
# ------------------------------------------------------------------------------------------------
def claim_1(ev: Evidence) -> list[dict]:
    """PIEs(method) - PIEs(reference) at the headline sparsity per schedule, raw and relative to
    each method's noise floor (PIEs / floor), for every method other than the reference."""
    rows = []
    k = ev.num_classes
    for m in ev.methods:
        if m == ev.reference:
            continue
        for sch in ev.schedules:
            km, kr = ev.at_headline(m, sch), ev.at_headline(ev.reference, sch)
            if km is None or kr is None:
                continue
            pops = {"dm": ev.preds[dense_key(km)], "pm": ev.preds[km],
                    "dr": ev.preds[dense_key(kr)], "pr": ev.preds[kr]}
            floors = floor_key(km) in ev.preds and floor_key(kr) in ev.preds
            if floors:
                pops.update(fm=ev.preds[floor_key(km)], fr=ev.preds[floor_key(kr)])

            def stat(p: Mapping[str, np.ndarray]) -> np.ndarray:
                dm, dr = metrics.modal_labels(p["dm"], k), metrics.modal_labels(p["dr"], k)
                a = (dm != metrics.modal_labels(p["pm"], k)).sum()
                b = (dr != metrics.modal_labels(p["pr"], k)).sum()
                if "fm" not in p:
                    return np.array([a - b, np.nan], float)
                fa = (dm != metrics.modal_labels(p["fm"], k)).sum()
                fb = (dr != metrics.modal_labels(p["fr"], k)).sum()
                return np.array([a - b, _ratio(a, fa) - _ratio(b, fb)])

            iv = ev.interval(pops, stat)
            comp = f"{m} vs {ev.reference}, {sch} @ {ev.headline}"
            rows.append(_row(ev, 1, comp, f"PIEs({m}) - PIEs({ev.reference})", iv, 0, True))
            if floors:
                rows.append(_row(ev, 1, comp, f"PIEs/floor ({m}) - PIEs/floor ({ev.reference})",
                                 iv, 1, True))
    return rows


# ------------------------------------------------------------------------------------------------
# claim 2: PIEs carry the representation damage (Q-Score, prediction depth)
# ------------------------------------------------------------------------------------------------
def damage_difference(dense_preds: np.ndarray, pruned_preds: np.ndarray, dense_values: np.ndarray,
                      pruned_values: np.ndarray, num_classes: int) -> float:
    """Mean over PIEs minus mean over the other images of the per-image change from the dense to
    the pruned population mean of a per-model value (NaN values ignored); NaN when either group is
    empty."""
    return _group_difference(metrics.pie_mask(dense_preds, pruned_preds, num_classes), dense_values,
                             pruned_values)


def _group_difference(mask: np.ndarray, dense_values: np.ndarray, pruned_values: np.ndarray
                      ) -> float:
    if len(dense_values) == 0 or len(pruned_values) == 0:
        return float("nan")
    with warnings.catch_warnings():  # all-NaN columns (constant features) are left out
        warnings.simplefilter("ignore", RuntimeWarning)
        delta = np.nanmean(pruned_values, 0) - np.nanmean(dense_values, 0)
    ok = np.isfinite(delta)
    a, b = delta[mask & ok], delta[~mask & ok]
    return float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")


def claim_2(ev: Evidence) -> list[dict]:
    """Per method and schedule at the headline sparsity: mean dense->pruned change of the
    population-mean Q-Score (and prediction depth) over PIEs minus over the other images. Holds
    when PIEs lose more Q-Score (< 0) and gain more depth (> 0)."""
    rows = []
    k = ev.num_classes
    for m in ev.methods:
        for sch in ev.schedules:
            key = ev.at_headline(m, sch)
            if key is None:
                continue
            dk = dense_key(key)
            pops = {"dp": ev.preds[dk], "pp": ev.preds[key]}
            parts = []
            for name, table, greater in (("Q-Score", ev.qscores, False),
                                         ("prediction depth", ev.depths, True)):
                if dk in table and key in table:
                    pops[f"d{name}"], pops[f"p{name}"] = table[dk], table[key]
                    parts.append((name, greater))
            if not parts:
                continue

            def stat(p: Mapping[str, np.ndarray], parts=parts) -> np.ndarray:
                mask = metrics.pie_mask(p["dp"], p["pp"], k)
                return np.array([_group_difference(mask, p[f"d{n}"], p[f"p{n}"])
                                 for n, _ in parts])

            iv = ev.interval(pops, stat)
            for i, (name, greater) in enumerate(parts):
                models = min(len(pops[f"d{name}"]), len(pops[f"p{name}"]))
                rows.append(_row(ev, 2, f"{m} {sch} @ {ev.headline} ({name}: {models} models)",
                                 f"mean d{name}(PIEs) - mean d{name}(others)", iv, i, greater))
    return rows


# ------------------------------------------------------------------------------------------------
# claim 3: early pruning hurts most (the onset sweep)
# ------------------------------------------------------------------------------------------------
def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xc = x - x.mean()
    den = (xc ** 2).sum()
    return float((xc * (y - y.mean())).sum() / den) if den > 0 else float("nan")


def claim_3(ev: Evidence) -> list[dict]:
    """Per method: the least-squares slope of the PIE count against the GMP begin fraction over
    the onset sweep (same sparsity, same duration); holds when negative. The early-vs-late
    contrast at the headline sparsity is shown but does not decide."""
    rows = []
    k = ev.num_classes
    for m in ev.methods:
        pts = sorted(((b, key) for key, b in ev.onset.items()
                      if key[0] == m and key in ev.preds and dense_key(key) in ev.preds),
                     key=lambda t: (t[0], t[1]))
        if len({b for b, _ in pts}) < 2:
            continue
        dk = dense_key(pts[0][1])
        begins = np.array([b for b, _ in pts])
        pops = {"dense": ev.preds[dk], **{i: ev.preds[key] for i, (_, key) in enumerate(pts)}}

        def stat(p: Mapping, n=len(pts), begins=begins) -> float:
            d = metrics.modal_labels(p["dense"], k)
            return slope(begins, [(d != metrics.modal_labels(p[i], k)).sum() for i in range(n)])

        iv = ev.interval(pops, stat)
        sp = sorted({key[2] for _, key in pts})
        rows.append(_row(ev, 3, f"{m} @ {', '.join(map(str, sp))} (begins "
                                + ", ".join(f"{b:.3g}" for b in begins) + ")",
                         "slope of PIEs vs GMP begin (PIEs per unit of training)", iv, (), False))
    early, late = ev.contrast
    for m in ev.methods:
        ke, kl = ev.at_headline(m, early), ev.at_headline(m, late)
        if ke is None or kl is None:
            continue
        pops = {"dense": ev.preds[dense_key(ke)], "early": ev.preds[ke], "late": ev.preds[kl]}

        def stat2(p: Mapping) -> float:
            d = metrics.modal_labels(p["dense"], k)
            early, late = metrics.modal_labels(p["early"], k), metrics.modal_labels(p["late"], k)
            return float((d != early).sum() - (d != late).sum())

        rows.append(_row(ev, 3, f"{m} @ {ev.headline} (windows differ in length: does not decide)",
                         f"PIEs({early}) - PIEs({late})", ev.interval(pops, stat2), (), True,
                         decides=False))
    return rows


# ------------------------------------------------------------------------------------------------
# claim 4: PIE sets are largely unique to each learning-and-pruning pair
# ------------------------------------------------------------------------------------------------
def jaccard_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Jaccard index between boolean masks (rows); 0 where both are empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def random_jaccard(size_a: np.ndarray, size_b: np.ndarray, n: int) -> np.ndarray:
    """Overlap of random sets of the given sizes among ``n`` images: expected intersection
    (a*b/n) over expected union (a + b - a*b/n); 0 where both are empty."""
    a, b = np.asarray(size_a, float)[:, None], np.asarray(size_b, float)[None, :]
    inter = a * b / n
    union = a + b - inter
    return np.divide(inter, union, out=np.zeros_like(union), where=union > 0)


def half_splits(n: int, max_splits: int = MAX_SPLITS, seed: int = 0
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Splits of ``n`` seeds into two disjoint halves of ``n // 2`` (one seed left out when
    ``n`` is odd): all unordered splits when there are at most ``max_splits``, else random ones."""
    h = n // 2
    if h < 1:
        return []
    total = math.comb(n, h) * math.comb(n - h, h) // 2
    if total <= max_splits:
        out = []
        for a in itertools.combinations(range(n), h):
            rest = [i for i in range(n) if i not in a]
            for b in itertools.combinations(rest, h):
                if a < b:
                    out.append((np.array(a), np.array(b)))
        return out
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(max_splits)]
    return [(np.sort(p[:h]), np.sort(p[h:2 * h])) for p in perms]


def overlap_statistics(dense: Mapping[str, np.ndarray], pruned: Mapping[tuple, np.ndarray],
                       num_classes: int, max_splits: int = MAX_SPLITS) -> np.ndarray:
    """Claim 4's statistics, from split halves of the seeds (PIE sets of half A vs half B).

    ``dense``: method -> (models, images); ``pruned``: (method, schedule) -> (models, images),
    rows paired by seed. For each split into halves A and B (the same seeds in every
    population): within(p) = J(PIEs_A(p), PIEs_B(p)); cross(p, q) = mean of J(PIEs_A(p), PIEs_B(q))
    and J(PIEs_B(p), PIEs_A(q)) for different pairs p, q, so both use two disjoint halves of the
    seeds and differ only in the pair. Returns, averaged over splits and pairs:
    [cross - within (paired: cross(p, q) - mean(within(p), within(q))), the same over pairs with
    the same schedule and another method, over pairs with the same method and another schedule,
    within, cross, random-set overlap of within's and of cross's sets (same sizes,
    :func:`random_jaccard`), within - its random overlap, cross - its random overlap].
    """
    names = list(pruned)
    if len(names) < 2:
        raise ValueError(f"claim 4 needs at least two (method, schedule) pairs, got {names}")
    n = min(len(v) for v in list(dense.values()) + list(pruned.values()))
    splits = half_splits(n, max_splits)
    if not splits:
        return np.full(9, np.nan)
    n_img = next(iter(pruned.values())).shape[1]
    iu = np.triu_indices(len(names), 1)
    same_sch = np.array([names[i][1] == names[j][1] for i, j in zip(*iu)])
    same_m = np.array([names[i][0] == names[j][0] for i, j in zip(*iu)])
    acc = []
    for a, b in splits:
        masks = {}
        for half, rows in (("A", a), ("B", b)):
            dm = {m: metrics.modal_labels(np.asarray(v)[rows], num_classes) for m, v in dense.items()}
            masks[half] = np.stack([dm[p[0]] != metrics.modal_labels(np.asarray(pruned[p])[rows], num_classes)
                                    for p in names])
        jab = jaccard_rows(masks["A"], masks["B"])  # [p, q]: J(A of p, B of q)
        within = np.diag(jab)
        cross = ((jab + jab.T) / 2)[iu]
        paired = cross - (within[iu[0]] + within[iu[1]]) / 2
        sa, sb = masks["A"].sum(1), masks["B"].sum(1)
        rnd = random_jaccard(sa, sb, n_img)
        rnd_cross = ((rnd + rnd.T) / 2)[iu]

        def mean(x: np.ndarray) -> float:
            return float(x.mean()) if x.size else float("nan")
        w, c, rw, rc = mean(within), mean(cross), mean(np.diag(rnd)), mean(rnd_cross)
        acc.append([mean(paired), mean(paired[same_sch & ~same_m]),
                    mean(paired[same_m & ~same_sch]), w, c, rw, rc, w - rw, c - rc])
    with warnings.catch_warnings():  # a column that is NaN for every split stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.array(acc, float), 0)


def claim_4(ev: Evidence) -> list[dict]:
    """Cross-pair PIE-set overlap (Jaccard) against the within-pair split-half overlap at the
    headline sparsity; holds when cross < within. The overlap of random sets of the same sizes is
    shown as the floor."""
    pairs = [(m, sch) for m in ev.methods for sch in ev.schedules if ev.at_headline(m, sch)]
    if len(pairs) < 2:
        return []
    k = ev.num_classes
    pops = {("dense", m): ev.preds[(m, "dense", 0.0)] for m in {p[0] for p in pairs}}
    pops.update({p: ev.preds[(p[0], p[1], ev.headline)] for p in pairs})

    def stat(p: Mapping) -> np.ndarray:
        dense = {key[1]: v for key, v in p.items() if key[0] == "dense"}
        pruned = {key: v for key, v in p.items() if key[0] != "dense"}
        return overlap_statistics(dense, pruned, k)

    iv = ev.interval(pops, stat)
    e = iv.estimate
    n = min(len(v) for v in pops.values())
    h = n // 2
    where = (f"{len(pairs)} pairs @ {ev.headline}, halves of {h} seed{'s' * (h != 1)} (Jaccard "
             f"within {e[3]:.3f}, cross {e[4]:.3f}; random sets {e[5]:.3f} / {e[6]:.3f})")
    rows = [_row(ev, 4, where, "cross-pair - within-pair Jaccard", iv, 0, False)]
    if np.isfinite(e[1]):
        rows.append(_row(ev, 4, "same schedule, another method",
                         "cross-pair - within-pair Jaccard", iv, 1, False, decides=False))
    if np.isfinite(e[2]):
        rows.append(_row(ev, 4, "same method, another schedule",
                         "cross-pair - within-pair Jaccard", iv, 2, False, decides=False))
    rows.append(_row(ev, 4, "within-pair reproducibility above chance (the floor)",
                     "within-pair - random-set Jaccard", iv, 7, True, decides=False))
    rows.append(_row(ev, 4, "cross-pair overlap above chance (the floor)",
                     "cross-pair - random-set Jaccard", iv, 8, True, decides=False))
    return rows


CLAIMS: list[Callable[[Evidence], list[dict]]] = [claim_1, claim_2, claim_3, claim_4]


# ------------------------------------------------------------------------------------------------
# the table, its loader and its Markdown
# ------------------------------------------------------------------------------------------------
def run_claims(ev: Evidence, claims: list[Callable[[Evidence], list[dict]]] | None = None
               ) -> pd.DataFrame:
    """T1: the rows of every claim function (default :data:`CLAIMS`) on ``ev``."""
    rows = [r for fn in (CLAIMS if claims is None else claims) for r in fn(ev)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def load_evidence(preset, store, data=None, confidence: float = intervals.CONFIDENCE,
                  max_subsets: int = intervals.MAX_SUBSETS) -> Evidence:
    """The arrays every claim needs, from a run store: predictions of every finished population,
    per-model Q-Scores of the dense and headline-sparsity populations, and (with ``data``, the
    study's dataset) per-model prediction depth of their first ``preset.pd_models`` models from
    the cached k-NN probes (computed and cached when missing)."""
    from . import evaluate

    pops = evaluate.populations(preset, store)
    preds = {key: evaluate.predictions(store, cfgs) for key, cfgs in pops.items()}
    begins = evaluate.onset_begins(preset)
    onset = {key: begins[key[1]] for key in preds
             if key[1] in begins and key[2] == preset.onset_sparsity}
    damage = [key for key in pops if key[1] == "dense"
              or (key[2] == preset.headline_sparsity and key[1] in preset.schedules)]
    qscores = {key: np.stack([metrics.q_score(store.load_features(c).numpy()) for c in pops[key]])
               for key in damage}
    depths = {}
    if data is not None:
        for key in damage:
            cfgs = pops[key][:preset.pd_models]
            depths[key] = np.stack([metrics.prediction_depth(
                evaluate.probe_predictions(c, store, data, preset.knn_k, preset.pd_train_images),
                store.load_logits(c).argmax(1).numpy()) for c in cfgs])
    return Evidence(preds=preds, num_classes=preset.ce.num_classes,
                    headline=preset.headline_sparsity, schedules=tuple(preset.schedules),
                    methods=tuple(m for m in preset.methods if any(k[0] == m for k in preds)),
                    onset=onset, qscores=qscores, depths=depths, scale=preset.label(),
                    confidence=confidence, max_subsets=max_subsets)


def claims_table(preset, store, data=None, confidence: float = intervals.CONFIDENCE,
                 max_subsets: int = intervals.MAX_SUBSETS) -> pd.DataFrame:
    """T1 of a study: :func:`run_claims` on :func:`load_evidence` (prediction depth only when
    ``data`` is given)."""
    return run_claims(load_evidence(preset, store, data, confidence, max_subsets))


def _num(x: float) -> str:
    """A number for prose: integers with thousands separators, else 3 significant digits."""
    if not np.isfinite(x):
        return "n/a"
    if float(x).is_integer() or abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _ci(lo: float, hi: float) -> str:
    return f"[{_num(lo)}, {_num(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "[no interval]"


def claims_markdown(t1: pd.DataFrame) -> str:
    """T1 as a Markdown table (for the README and the executed notebook)."""
    lines = ["| claim | comparison | statistic | estimate [95% CI] | verdict |",
             "|---|---|---|---|---|"]
    for r in t1.itertuples():
        v = f"**{r.verdict}**" if r.decides else f"{r.verdict} (shown, does not decide)"
        lines.append(f"| {r.claim} | {r.comparison} | {r.statistic} | "
                     f"{_num(r.estimate)} {_ci(r.ci_low, r.ci_high)} | {v} |")
    return "\n".join(lines)


def counts_markdown(counts: pd.DataFrame, sparsity: float | None = None) -> str:
    """One line per method: its PIE counts at ``sparsity`` (default: the highest), each with the
    method's noise floor and the tied votes."""
    if counts is None or counts.empty:
        return "No pruned population is finished yet."
    s = counts.sparsity.max() if sparsity is None else sparsity
    d = counts[counts.sparsity == s]
    lines = [f"PIE counts at sparsity {s} (95% intervals over seeds; the noise floor is the PIE "
             "count between two independent dense populations of the same method; tied votes are "
             "dense / pruned):"]
    for m, g in d.groupby("method", sort=False):
        parts = [f"{r.schedule} {_num(r.pies)} {_ci(r.ci_low, r.ci_high)} (floor {_num(r.floor)}"
                 f" {_ci(r.floor_ci_low, r.floor_ci_high)}, {r.pies_over_floor:.2f}x floor; ties "
                 f"{r.ties_dense}/{r.ties_pruned})" if np.isfinite(r.floor) else
                 f"{r.schedule} {_num(r.pies)} {_ci(r.ci_low, r.ci_high)} (no floor population; "
                 f"ties {r.ties_dense}/{r.ties_pruned})" for r in g.itertuples()]
        lines.append(f"- **{m}**: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def summary_markdown(t1: pd.DataFrame | None, counts: pd.DataFrame | None = None,
                     sparsity: float | None = None) -> str:
    """A short summary generated from the tables: the PIE counts next to their floors, and per
    claim what holds, what is contradicted and what cannot be told apart."""
    out = []
    if counts is not None:
        out.append(counts_markdown(counts, sparsity))
    if t1 is not None and len(t1):
        scale = t1.scale.iloc[0] if "scale" in t1 and t1.scale.iloc[0] else ""
        out.append(f"Claims{f' at {scale}' if scale else ''} (verdicts from 95% intervals over "
                   "seeds; only deciding rows count):")
        for claim, g in t1.groupby("claim", sort=False):
            dec = g[g.decides.astype(bool)]
            tally = {v: int((dec.verdict == v).sum()) for v in VERDICTS}
            n = len(dec)
            if n == 0:
                out.append(f"- **{claim}**: no deciding comparison could be computed.")
                continue
            if n == 1:
                head = {HOLDS: "holds", CONTRADICTED: "is contradicted",
                        UNCLEAR: "cannot be told apart"}[dec.verdict.iloc[0]]
            elif tally[HOLDS] == n:
                head = f"holds in all {n} comparisons"
            elif tally[CONTRADICTED] == n:
                head = f"is contradicted in all {n} comparisons"
            elif tally[UNCLEAR] == n:
                head = f"cannot be told apart in any of its {n} comparisons"
            else:
                head = (f"holds in {tally[HOLDS]} of {n} comparisons, is contradicted in "
                        f"{tally[CONTRADICTED]} and cannot be told apart in {tally[UNCLEAR]}")
            parts = []
            for stat, h in dec.groupby("statistic", sort=False):
                parts.append(f"{stat}: " + "; ".join(
                    f"{r.comparison} = {_num(r.estimate)} {_ci(r.ci_low, r.ci_high)} ({r.verdict})"
                    for r in h.itertuples()))
            out.append(f"- **{claim}** {head}. " + ". ".join(parts) + ".")
    return "\n\n".join(out) if out else "Nothing to summarise yet."
