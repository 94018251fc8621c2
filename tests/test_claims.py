"""The seed interval, the PIE counts with their floor, and each claim function (with its guards)
on constructed populations whose answer is known; the simulation that validates the intervals is
``test_claim_simulation.py``."""
import math

import numpy as np
import pandas as pd
import pytest

from pcl import claim_stats, claims, intervals, metrics
from pcl.claims import CONTRADICTED, HOLDS, NOT_DECIDED, TOO_FEW, UNCLEAR, Evidence
from pcl.keys import PopKey

K = 10


# ------------------------------------------------------------------------------------------------
# the interval helper
# ------------------------------------------------------------------------------------------------
def test_seed_subsets_enumerate_or_sample():
    s = intervals.seed_subsets(7)  # delete one of 7: every subset of 6
    assert s.shape == (7, 6)
    s = intervals.seed_subsets(9)  # delete a quarter (2) of 9: every subset of 7
    assert s.shape == (math.comb(9, 7), 7)
    assert len({tuple(r) for r in s}) == len(s) and (np.diff(s, axis=1) > 0).all()
    r = intervals.seed_subsets(30, max_subsets=50, seed=1)
    assert r.shape == (50, 23) and r.max() < 30
    assert (r == intervals.seed_subsets(30, max_subsets=50, seed=1)).all()
    with pytest.raises(ValueError, match="delete must be in 1..4"):
        intervals.seed_subsets(5, delete=5)


@pytest.mark.parametrize("n,d", [(5, 2), (6, 3), (7, 1), (7, 3)])
def test_jackknife_of_a_mean_is_the_textbook_standard_error(n, d):
    """For the mean of per-seed values, the delete-d jackknife over all subsets gives exactly
    s / sqrt(n) (s: sample standard deviation): the reference is the textbook formula."""
    x = np.random.default_rng(n).normal(size=n)
    iv = intervals.seed_interval({"a": x}, lambda p: p["a"].mean(), delete=d)
    assert iv.subsets == math.comb(n, d)
    assert iv.se == pytest.approx(x.std(ddof=1) / np.sqrt(n))
    z = 1.959963984540054
    assert iv.low == pytest.approx(x.mean() - z * iv.se) and iv.high == pytest.approx(x.mean() + z * iv.se)


def test_seed_interval_rows_are_paired_and_small_populations_get_no_interval():
    seen = []
    pops = {"dense": np.arange(5)[:, None], "pruned": 10 + np.arange(5)[:, None],
            "depth": 20 + np.arange(3)[:, None]}
    intervals.seed_interval(pops, lambda p: seen.append({k: v[:, 0].tolist() for k, v in p.items()}) or 0.0)
    for s in seen[1:]:  # the same seeds are dropped from every population; the short one keeps its own
        assert [v - 10 for v in s["pruned"]] == s["dense"]
        assert [v - 20 for v in s["depth"]] == [v for v in s["dense"] if v < 3]
    iv = intervals.seed_interval({"a": np.zeros((2, 4))}, lambda p: 1.0)
    assert iv.estimate == 1.0 and np.isnan(iv.low) and np.isnan(iv.high)
    assert claims.verdict(float(iv.low), float(iv.high)) == UNCLEAR


# ------------------------------------------------------------------------------------------------
# PIE counts, floor and ties
# ------------------------------------------------------------------------------------------------
def test_pie_counts_hand_example():
    dense = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 9, 5]] + [[0, 1, 2, 3, 4, 5]] * 2)
    pruned = np.array([[0, 1, 2, 9, 4, 5], [1, 1, 2, 9, 4, 5], [0, 1, 2, 9, 4, 5]] + [[0, 1, 2, 9, 4, 5]] * 2)
    floor = np.array([[0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 4, 4], [0, 7, 2, 3, 4, 4]] + [[0, 1, 2, 3, 4, 4]] * 2)
    # dense modal [0, 1, 2, 3, 4, 5] (image 5 votes 5, 4, 5, 5, 5); no tied vote among these models
    preds = {("ce", "dense", 0.0): dense, ("ce", "oneshot", 0.9): pruned, ("ce", "floor", 0.0): floor}
    row = claims.pie_counts(preds, K).iloc[0]
    assert row.pies == 1  # image 3
    assert row.floor == 1  # image 5 (floor modal 4)
    assert row.pies_over_floor == 1.0
    assert (row.ties_dense, row.ties_pruned, row.ties_floor) == (0, 0, 0)
    assert row.ci_low <= row.pies <= row.ci_high and row.models == 5 and row.floor_models == 5
    assert "delete-one jackknife" in row.interval and "expected value at 5 seeds" in row.interval
    two = {("ce", "dense", 0.0): dense[:2], ("ce", "oneshot", 0.9): pruned[:2]}
    r2 = claims.pie_counts(two, K).iloc[0]
    # two models: image 0 pruned (0 vs 1) and image 5 dense (5 vs 4) are ties -> smallest class
    assert (r2.ties_dense, r2.ties_pruned) == (1, 1) and r2.pies == 2 and np.isnan(r2.floor)
    assert np.isnan(r2.ci_low) and "too few seeds" in r2.interval  # two seeds: no interval


def test_tied_votes_against_brute_force():
    p = np.random.default_rng(0).integers(0, 4, (4, 300))
    ref = [sorted(np.bincount(p[:, i], minlength=K))[-1] == sorted(np.bincount(p[:, i], minlength=K))[-2]
           for i in range(p.shape[1])]
    assert metrics.tied_votes(p, K).tolist() == ref
    assert (metrics.modal_labels(p, K) == metrics.modal_labels(p, K)).all()


# ------------------------------------------------------------------------------------------------
# constructed populations for the claim functions
# ------------------------------------------------------------------------------------------------
N, NOISY, SEEDS = 3000, 300, 7


def population(rng, flip=(), n=SEEDS, shift=1):
    """``n`` models that predict the image's class (``i % 10``) except on the first ``NOISY``
    images (a random class per model: seed noise) and on ``flip`` (every model predicts the class
    + ``shift``: deterministic PIEs)."""
    y = np.arange(N) % K
    p = np.tile(y, (n, 1))
    p[:, :NOISY] = rng.integers(0, K, (n, NOISY))
    p[:, list(flip)] = (y[list(flip)] + shift) % K
    return p


def sets(sizes, start=NOISY, nested=False):
    """Image sets of the given sizes beyond the noisy images: nested (each contains the last) or
    disjoint."""
    out, at = [], start
    for s in sizes:
        out.append(range(start, start + s) if nested else range(at, at + s))
        at += s
    return out


def evidence(preds, **kw):
    return Evidence(preds=preds, num_classes=K, headline=0.9, **kw)


MATCHED = {"supcon": 0.60, "ce": 0.61, "simclr": 0.6}


def claim1_evidence(sup_flips, ce_flips, seed=0, accuracy=MATCHED, n=SEEDS):
    rng = np.random.default_rng(seed)
    preds = {}
    for m, f in (("supcon", sup_flips), ("ce", ce_flips)):
        preds[PopKey.dense(m)] = population(rng, n=n)
        preds[PopKey.floor(m)] = population(rng, n=n)
        preds[PopKey(m, "oneshot", 0.9)] = population(rng, f, n=n)
    return evidence(preds, methods=("ce", "supcon"), accuracy=accuracy)


def test_claim1_superset_holds_and_flips():
    small, big = sets([100, 400], nested=True)
    t = pd.DataFrame(claims.claim_1(claim1_evidence(big, small)))
    assert len(t) == 2 and t.decides.all()
    assert (t.verdict == HOLDS).all(), t
    assert 250 < t.estimate.iloc[0] < 350  # 300 extra PIEs, give or take the noisy images
    # log(PIEs/floor): the floors are the ~270 noisy images, the PIEs those plus the flips
    assert "log(PIEs/floor)" in t.statistic.iloc[1] and 0.4 < t.estimate.iloc[1] < 1.0
    assert (t.note.str.contains("dense accuracy supcon 60.0 %, ce 61.0 %")).all()
    t = pd.DataFrame(claims.claim_1(claim1_evidence(small, big)))
    assert (t.verdict == CONTRADICTED).all(), t


def test_claim1_guards_accuracy_gap_small_floor_and_too_few_seeds():
    small, big = sets([100, 400], nested=True)
    gap = pd.DataFrame(claims.claim_1(claim1_evidence(big, small, accuracy={"supcon": 0.46,
                                                                             "ce": 0.60})))
    assert (gap.verdict == NOT_DECIDED).all() and gap.note.str.contains("14.0 points apart").all()
    unknown = pd.DataFrame(claims.claim_1(claim1_evidence(big, small, accuracy={})))
    assert (unknown.verdict == NOT_DECIDED).all()
    few = pd.DataFrame(claims.claim_1(claim1_evidence(big, small, n=4)))
    assert (few.verdict == TOO_FEW).all()
    # no noisy images: the floors are 0, below the validated MIN_FLOOR -> the ratio row is guarded
    ev = claim1_evidence(big, small)
    ev.preds = {k: np.where(np.arange(N) < NOISY, np.arange(N) % K, v) for k, v in ev.preds.items()}
    t = pd.DataFrame(claims.claim_1(ev))
    assert t.verdict.tolist() == [HOLDS, NOT_DECIDED] and "noise floor 0 PIEs" in t.note.iloc[1]
    assert claims.floor_guard(claims.MIN_FLOOR, 1000) == ""
    assert claims.floor_guard(claims.MIN_FLOOR - 1, 1000) != ""


def test_claim1_identical_methods_cannot_be_told_apart_and_third_method():
    ev = claim1_evidence(range(300, 400), range(300, 400))
    ev.preds.update({PopKey("ce", *k[1:]): v for k, v in ev.preds.items() if k[0] == "supcon"})
    t = pd.DataFrame(claims.claim_1(ev))
    assert (t.estimate == 0).all() and (t.verdict == UNCLEAR).all()
    ev.preds.update({PopKey("simclr", *k[1:]): v for k, v in ev.preds.items() if k[0] == "supcon"})
    ev.methods = ("ce", "supcon", "simclr")
    assert {c.split(",")[0] for c in pd.DataFrame(claims.claim_1(ev)).comparison} == {
        "supcon vs ce", "simclr vs ce"}


def claim2_evidence(sign, seed=0):
    """PIEs = ``flip``; the pruned population loses ``sign`` * 0.5 Q-Score on them and 0.1
    elsewhere, and gains ``sign`` * 2 depth on them (depth: first 3 models only)."""
    rng = np.random.default_rng(seed)
    flip = sets([400])[0]
    on = np.zeros(N, bool)
    on[list(flip)] = True
    dense, pruned = population(rng), population(rng, flip)
    qd = 1 + rng.normal(0, 0.05, (SEEDS, N))
    qp = qd - 0.1 - sign * 0.5 * on + rng.normal(0, 0.05, (SEEDS, N))
    dd = rng.integers(0, 5, (3, N)).astype(float)
    dp = dd + sign * 2 * on + rng.integers(0, 2, (3, N))
    keys = {"d": PopKey.dense("ce"), "p": PopKey("ce", "gmp_early", 0.9)}
    return evidence({keys["d"]: dense, keys["p"]: pruned},
                    qscores={keys["d"]: qd, keys["p"]: qp}, depths={keys["d"]: dd, keys["p"]: dp})


def test_claim2_pies_carry_the_damage_and_flips():
    ev = claim2_evidence(+1)
    t = pd.DataFrame(claims.claim_2(ev))
    assert len(t) == 2 and (t.verdict == HOLDS).all(), t
    q, d = t.iloc[0], t.iloc[1]
    # the flipped images are 400 of the PIEs (the rest are noisy images that lose only 0.1)
    share = 400 / metrics.pie_mask(*ev.preds.values(), K).sum()
    assert "Q-Score" in q.statistic and q.estimate == pytest.approx(-0.5 * share, abs=0.02)
    assert "depth" in d.statistic and d.estimate == pytest.approx(2 * share, abs=0.1)
    t = pd.DataFrame(claims.claim_2(claim2_evidence(-1)))
    assert (t.verdict == CONTRADICTED).all(), t


def test_group_difference_by_hand():
    mask = np.array([False, False, True, True])  # PIEs: images 2 and 3
    qd = np.ones((3, 4))
    qp = np.array([[1.0, 0.0, -1.0, np.nan]] * 3)  # deltas 0, -1, -2, (NaN left out)
    assert claim_stats.group_difference(mask, qd, qp) == pytest.approx(-2 - (-0.5))
    batch = np.stack([qp, qp + np.array([0, 0, 1.0, 0])], 1)  # (models, 2 studies, images)
    both = claim_stats.group_difference(np.stack([mask, mask]), np.stack([qd, qd], 1), batch)
    assert both == pytest.approx([-1.5, -0.5])


BEGINS = (0.0125, 0.2, 0.4, 0.6)


def onset_evidence(counts, begins=BEGINS, duration=0.2375, seed=0):
    """Onset points at ``begins`` with deterministic PIE sets of ``counts`` images (plus the
    noisy ones), and gmp_late with none."""
    rng = np.random.default_rng(seed)
    preds = {PopKey.dense("ce"): population(rng), PopKey("ce", "gmp_late", 0.9): population(rng)}
    onset = {}
    for b, c in zip(begins, counts, strict=True):
        key = PopKey("ce", "gmp_early" if b == begins[0] else f"gmp@{b:.2f}", 0.9)
        preds[key] = population(rng, sets([c])[0])
        onset[key] = (b, min(1.0, b + duration))
    return evidence(preds, onset=onset, schedules=("gmp_early", "gmp_late"))


def test_claim3_known_slope_every_point_and_flip():
    ev = onset_evidence((600, 466, 333, 200))
    t = pd.DataFrame(claims.claim_3(ev))
    main = t[t.decides.astype(bool)].iloc[0]
    dense = ev.preds[PopKey.dense("ce")]
    counts = [claim_stats.pie_count(dense, ev.preds[k], K) for k in sorted(ev.onset, key=ev.onset.get)]
    assert main.estimate == pytest.approx(np.polyfit(BEGINS, counts, 1)[0])
    assert -800 < main.estimate < -600  # -400 PIEs over 0.59 of training
    assert main.verdict == HOLDS
    points = t[t.statistic == "PIEs at this onset"]
    assert points.estimate.tolist() == counts and not points.decides.any()
    side = t[~t.decides.astype(bool) & (t.statistic != "PIEs at this onset")]
    assert len(side) == 1 and "gmp_early" in side.statistic.iloc[0]
    t = pd.DataFrame(claims.claim_3(onset_evidence((200, 333, 466, 600))))
    assert t[t.decides.astype(bool)].verdict.iloc[0] == CONTRADICTED


def test_claim3_needs_four_begins_and_windows_that_end_by_085():
    late = pd.DataFrame(claims.claim_3(onset_evidence((600, 466, 333, 200), duration=0.4)))
    main = late[late.decides.astype(bool)].iloc[0]
    assert main.verdict == NOT_DECIDED and "0.60-1.00" in main.note
    three = pd.DataFrame(claims.claim_3(onset_evidence((600, 400, 200), begins=BEGINS[:3])))
    main = three[three.decides.astype(bool)].iloc[0]
    assert main.verdict == NOT_DECIDED and "3 onset begins (needs at least 4)" in main.note


def claim4_evidence(kind, seed=0):
    """Two methods x two schedules, 5 seeds; PIE sets of 300 images that are each pair's own ('unique'),
    the same for every pair ('shared'), or CE's inside SupCon's 900 ('superset')."""
    rng = np.random.default_rng(seed)
    pairs = [(m, s) for m in ("ce", "supcon") for s in ("gmp_early", "oneshot")]
    own = {"unique": sets([300] * len(pairs)), "shared": [sets([300])[0]] * len(pairs),
           "superset": [sets([300])[0]] * 2 + [sets([900])[0]] * 2}[kind]
    preds = {PopKey.dense(m): population(rng, n=5) for m in ("ce", "supcon")}  # the study's 5
    for (m, s), f in zip(pairs, own, strict=True):
        preds[PopKey(m, s, 0.9)] = population(rng, f, n=5)
    return evidence(preds, methods=("ce", "supcon"), schedules=("gmp_early", "oneshot"))


def test_claim4_unique_pie_sets_hold_shared_and_nested_do_not():
    t = pd.DataFrame(claims.claim_4(claim4_evidence("unique")))
    main = t[t.decides.astype(bool)]
    assert len(main) == 1 and main.verdict.iloc[0] == HOLDS and main.estimate.iloc[0] < -0.3
    assert set(t.comparison) >= {"same schedule, another method", "same method, another schedule"}
    assert t[t.statistic.str.contains("random")].verdict.iloc[0] == HOLDS  # above chance
    assert "Jaccard" in " ".join(t.statistic)
    for kind in ("shared", "superset"):  # a set inside a larger one is not unique to its pair
        t = pd.DataFrame(claims.claim_4(claim4_evidence(kind)))
        main = t[t.decides.astype(bool)].iloc[0]
        assert main.verdict != HOLDS and abs(main.estimate) < 0.05, (kind, main)
    jac = t[t.statistic == claim_stats.STATISTICS[6]].iloc[0]
    assert jac.estimate < -0.2  # Jaccard would call the superset "unique" (confound 3)


def test_overlap_helpers_against_references():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 50)) < 0.3, rng.random((3, 50)) < 0.5
    oc, jac = claim_stats.pairwise(a, b)
    ref_j = [[metrics.pie_overlap(x, y)["jaccard"] for y in b] for x in a]
    ref_o = [[(x & y).sum() / min(x.sum(), y.sum()) for y in b] for x in a]
    assert jac == pytest.approx(np.array(ref_j)) and oc == pytest.approx(np.array(ref_o))
    # random sets of 200 and 300 among 1000 images: Monte Carlo mean of the overlap coefficient
    mc = np.mean([np.isin(rng.choice(1000, 200, replace=False), rng.choice(1000, 300, replace=False))
                  .sum() / 200 for _ in range(400)])
    assert mc == pytest.approx(300 / 1000, abs=0.01)  # max(|A|, |B|) / n, as split_overlaps uses
    sp = claim_stats.half_splits(5)
    assert len(sp) == 15 and all(len(set(x) | set(y)) == 4 for x, y in sp)
    assert len(claim_stats.half_splits(30, max_splits=7)) == 7


def test_overlap_matrix_by_brute_force():
    """F4's matrices: on 4 seeds every split into halves of 2 (3 of them); entry [p, q] is the mean
    over splits of OC(half A of p, half B of q) and OC(half B of p, half A of q)."""
    ev = claim4_evidence("unique")
    preds = {k: v[:4] for k, v in ev.preds.items()}
    oc, jac = claims.overlap_matrix(preds, K, 0.9)
    names = [k for k in preds if not k.is_dense]
    assert list(oc.index) == [f"{k.method} {k.schedule}" for k in names]

    def mask(key, rows):
        return (metrics.modal_labels(preds[PopKey.dense(key.method)][rows], K)
                != metrics.modal_labels(preds[key][rows], K))
    splits = [([0, 1], [2, 3]), ([0, 2], [1, 3]), ([0, 3], [1, 2])]
    for i, p in enumerate(names):
        for j, q in enumerate(names):
            vals = [metrics.pie_overlap(mask(p, a), mask(q, b)) for a, b in splits]
            vals += [metrics.pie_overlap(mask(p, b), mask(q, a)) for a, b in splits]
            ref_o = np.mean([v["intersection"] / (v["intersection"] + min(v["only_a"], v["only_b"]))
                             for v in vals])
            assert oc.iloc[i, j] == pytest.approx(ref_o)
            assert jac.iloc[i, j] == pytest.approx(np.mean([v["jaccard"] for v in vals]))
    assert (np.diag(oc) > 0.8).all() and (oc.to_numpy()[~np.eye(4, dtype=bool)] < 0.6).all()
    with pytest.raises(ValueError, match="no pruned population at sparsity 0.5"):
        claims.overlap_matrix(preds, K, 0.5)
