"""The claims' statistics: pure functions of (models, *batch, images) populations whose rows are
seeds in the same order, returned per batch element, so a simulation of many studies is one call.

Claim 4 and figure F4 compare PIE sets between *disjoint halves* of the seeds (a set measured on
all seeds cannot be compared with itself), so within-pair (diagonal) and cross-pair overlaps come
from the same number of models. The deciding overlap coefficient |A ∩ B| / min(|A|, |B|) is robust
to set size, unlike Jaccard (PROTOCOL.md, confound 3); random sets of the same sizes among n images
overlap by max(|A|, |B|) / n on average: the floor.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Mapping

import numpy as np

from . import metrics

#: Split-half splits per statistic (all of them when there are fewer).
MAX_SPLITS = 20
#: Names of the values :func:`overlap_statistics` returns, in order.
STATISTICS = ("cross - within (overlap coefficient)", "same schedule, another method",
              "same method, another schedule", "within (overlap coefficient)",
              "cross (overlap coefficient)", "cross - random sets (overlap coefficient)",
              "cross - within (Jaccard)", "within (Jaccard)", "cross (Jaccard)")


def modes(preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Modal labels of (models, *batch, images) predictions: (*batch, images)."""
    p = np.asarray(preds)
    return metrics.modal_labels(p.reshape(len(p), -1), num_classes).reshape(p.shape[1:])


def half_splits(n: int, max_splits: int = MAX_SPLITS, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Splits of ``n`` seeds into two disjoint halves of ``n // 2`` (one seed left out when
    ``n`` is odd): all unordered splits when there are at most ``max_splits``, else random ones."""
    h = n // 2
    if h < 1:
        return []
    if math.comb(n, h) * math.comb(n - h, h) // 2 <= max_splits:
        return [(np.array(a), np.array(b)) for a in itertools.combinations(range(n), h)
                for b in itertools.combinations([i for i in range(n) if i not in a], h) if a < b]
    rng = np.random.default_rng(seed)
    return [(np.sort(p[:h]), np.sort(p[h:2 * h])) for p in (rng.permutation(n) for _ in range(max_splits))]


def pairwise(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(overlap coefficient, Jaccard) between every set of ``a`` and every set of ``b``: boolean
    (P, *batch, images) masks -> two (P, P, *batch) arrays; NaN where a set is empty."""
    p, batch, n = a.shape[0], a.shape[1:-1], a.shape[-1]
    fa, fb = (np.moveaxis(x.reshape(p, -1, n), 1, 0).astype(np.float32) for x in (a, b))
    inter = np.moveaxis(fa @ fb.transpose(0, 2, 1), 0, -1).astype(float)  # (P, P, batch)
    sa, sb = fa.sum(-1).T[:, None], fb.sum(-1).T[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        oc = np.where(np.minimum(sa, sb) > 0, inter / np.minimum(sa, sb), np.nan)
        jac = np.where(sa + sb - inter > 0, inter / (sa + sb - inter), np.nan)
    return oc.reshape(p, p, *batch), jac.reshape(p, p, *batch)


def _split_masks(dense: Mapping[str, np.ndarray], pruned: Mapping[tuple, np.ndarray],
                 rows: np.ndarray, num_classes: int) -> np.ndarray:
    """(pairs, *batch, images) PIE masks of every pair on the seeds ``rows``."""
    dm = {m: modes(np.asarray(v)[rows], num_classes) for m, v in dense.items()}
    return np.stack([dm[key[0]] != modes(np.asarray(v)[rows], num_classes) for key, v in pruned.items()])


def _nanmean(x: np.ndarray, axis: int | tuple = 0) -> np.ndarray:
    with warnings.catch_warnings():  # an all-NaN slice stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis)


def split_overlaps(dense: Mapping[str, np.ndarray], pruned: Mapping[tuple, np.ndarray], num_classes: int,
                   max_splits: int = MAX_SPLITS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(overlap coefficient, Jaccard, random-set overlap coefficient), each (pairs, pairs, *batch),
    averaged over split halves; [p, q] averages half A of p vs half B of q and B of p vs A of q
    (symmetric). ``dense``: method -> (models, *batch, images); ``pruned``: (method, schedule) ->
    the same shape, rows paired by seed. NaN when there are fewer than 2 seeds."""
    splits = half_splits(min(len(v) for v in [*dense.values(), *pruned.values()]), max_splits)
    shape = np.shape(next(iter(pruned.values())))  # (models, *batch, images)
    if not splits:
        return tuple(np.full((len(pruned), len(pruned)) + shape[1:-1], np.nan) for _ in range(3))
    acc = []
    for a, b in splits:
        ma, mb = (_split_masks(dense, pruned, rows, num_classes) for rows in (a, b))
        rnd = np.maximum(ma.sum(-1)[:, None], mb.sum(-1)[None, :]) / shape[-1]
        acc.append([(x + np.swapaxes(x, 0, 1)) / 2 for x in (*pairwise(ma, mb), rnd)])
    oc, jac, rnd = _nanmean(np.array(acc), 0)
    return oc, jac, rnd


def overlap_statistics(dense: Mapping[str, np.ndarray], pruned: Mapping[tuple, np.ndarray],
                       num_classes: int, max_splits: int = MAX_SPLITS) -> np.ndarray:
    """Claim 4's statistics (:data:`STATISTICS`), each averaged over pairs of different
    configurations: (len(STATISTICS), *batch). For pairs p != q the cross-pair overlap is compared
    with the smaller within-pair overlap (the less reproducible pair bounds what any pair can share
    with it), so "cross - within" < 0: PIE sets less alike across pairs than within one."""
    names = list(pruned)
    if len(names) < 2:
        raise ValueError(f"claim 4 needs at least two (method, schedule) pairs, got {names}")
    oc, jac, rnd = split_overlaps(dense, pruned, num_classes, max_splits)
    i, j = np.triu_indices(len(names), 1)
    same_sch = np.array([names[x][1] == names[y][1] for x, y in zip(i, j, strict=True)])
    same_m = np.array([names[x][0] == names[y][0] for x, y in zip(i, j, strict=True)])

    def cross_within(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = np.moveaxis(np.diagonal(m, 0, 0, 1), -1, 0)  # (pairs, *batch)
        return m[i, j], np.minimum(w[i], w[j]), w

    c, ref, w = cross_within(oc)
    cj, refj, wj = cross_within(jac)
    d = c - ref
    out = [_nanmean(d), _nanmean(d[same_sch & ~same_m]), _nanmean(d[same_m & ~same_sch]),
           _nanmean(w), _nanmean(c), _nanmean(c - rnd[i, j]), _nanmean(cj - refj),
           _nanmean(wj), _nanmean(cj)]
    return np.array([np.broadcast_to(np.asarray(x, float), d.shape[1:]) for x in out])


def pie_count(dense: np.ndarray, pruned: np.ndarray, num_classes: int) -> np.ndarray:
    """PIEs between two (models, *batch, images) populations: a count per batch element."""
    return (modes(dense, num_classes) != modes(pruned, num_classes)).sum(-1)


def method_statistic(p: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    """[PIEs(m) - PIEs(r), log(PIEs(m) / floor(m)) - log(PIEs(r) / floor(r)), floor(m), floor(r)]
    from dense ``dm``/``dr``, pruned ``pm``/``pr`` and floor ``fm``/``fr`` populations (floor
    values NaN without floors)."""
    dm, dr = modes(p["dm"], k), modes(p["dr"], k)
    a, b = (dm != modes(p["pm"], k)).sum(-1), (dr != modes(p["pr"], k)).sum(-1)
    if "fm" not in p:
        return np.array([a - b, *[np.full(np.shape(a), np.nan)] * 3], float)
    fa, fb = (dm != modes(p["fm"], k)).sum(-1), (dr != modes(p["fr"], k)).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.log(a / fa) - np.log(b / fb)
    return np.array([a - b, rel, fa, fb], float)


def group_difference(mask: np.ndarray, dense_values: np.ndarray, pruned_values: np.ndarray) -> np.ndarray:
    """Mean over ``mask`` (PIEs) minus mean over the other images of the per-image change from
    the dense to the pruned population mean of a per-model value ((models, *batch, images); NaN
    values left out); NaN when either group is empty."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (constant features)
        delta = np.nanmean(pruned_values, 0) - np.nanmean(dense_values, 0)
        ok = np.isfinite(delta)
        d = np.where(ok, delta, 0.0)
        inside, outside = mask & ok, ~mask & ok
        return ((d * inside).sum(-1) / inside.sum(-1)) - ((d * outside).sum(-1) / outside.sum(-1))


def damage_statistic(p: Mapping[str, np.ndarray], k: int, names: tuple[str, ...]) -> np.ndarray:
    """Claim 2's statistic for each value in ``names`` (populations ``d<name>``/``p<name>``), the
    PIEs being those of the dense ``dp`` and pruned ``pp`` predictions."""
    mask = modes(p["dp"], k) != modes(p["pp"], k)
    return np.array([group_difference(mask, p[f"d{n}"], p[f"p{n}"]) for n in names], float)


def slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``y`` (points, *batch) on ``x`` (points,), per batch element."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xc = (x - x.mean()).reshape((-1,) + (1,) * (y.ndim - 1))
    den = float((xc ** 2).sum())
    return (xc * (y - y.mean(0))).sum(0) / den if den > 0 else np.full(y.shape[1:], np.nan)


def onset_statistic(p: Mapping, k: int, begins: np.ndarray) -> np.ndarray:
    """[slope of PIEs vs begin, PIEs at each begin] from ``dense`` and points ``0..P-1``."""
    d = modes(p["dense"], k)
    counts = np.array([(d != modes(p[i], k)).sum(-1) for i in range(len(begins))], float)
    return np.concatenate([slope(begins, counts)[None], counts])


def pair_statistic(p: Mapping, k: int) -> np.ndarray:
    """:func:`overlap_statistics` of claim 4's populations: ``('dense', method)`` and
    ``(method, schedule)`` keys."""
    dense = {key[1]: v for key, v in p.items() if key[0] == "dense"}
    return overlap_statistics(dense, {key: v for key, v in p.items() if key[0] != "dense"}, k)
