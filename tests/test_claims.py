"""The seed interval (validated by simulation), the PIE counts with their floor, and each claim
function on constructed populations whose answer is known."""
import math

import numpy as np
import pandas as pd
import pytest

from pcl import claims, intervals, metrics
from pcl.claims import CONTRADICTED, HOLDS, UNCLEAR, Evidence

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
# validation by simulation (PROTOCOL.md: coverage >= 90 %, width <= 2x the spread, verdicts)
# ------------------------------------------------------------------------------------------------
class Simulated:
    """Simulated populations of models on fixed images.

    Each image has a probability of being classified correctly (Beta, mean ``accuracy``) and a
    confusing class that takes half of the errors; each model has its own offset (a seed's overall
    quality). Pruning moves a fixed set of images to a lower probability (times 0.4); a pruned
    model keeps its dense model's prediction elsewhere with probability ``pairing`` (one-shot-like)
    and is drawn afresh otherwise (GMP-from-scratch-like).
    """

    def __init__(self, rng, shape, accuracy=0.6, pairing=0.5):
        img = np.random.default_rng(123)  # the images are fixed; the seeds vary
        self.rng, self.shape, self.pairing = rng, shape, pairing
        images = shape[-1]
        self.y = np.arange(images) % K
        p = np.clip(img.beta(accuracy * 1.5, (1 - accuracy) * 1.5, images), 1e-3, 1 - 1e-3)
        self.logit = np.log(p / (1 - p))
        self.confuser = (self.y + 1 + img.integers(0, K - 1, images)) % K
        self.order = img.permutation(images)

    def draw(self, prob):
        r, shape = self.rng, self.shape
        wrong = np.where(r.random(shape) < 0.5, self.confuser, r.integers(0, K, shape))
        return np.where(r.random(shape) < prob, self.y, wrong)

    def dense(self):
        """(predictions, probabilities) of a dense population."""
        quality = self.logit + self.rng.normal(0, 0.3, self.shape[:-1] + (1,))
        prob = 1 / (1 + np.exp(-quality))
        return self.draw(prob), prob

    def pruned(self, dense, prob, flipped, offset=0):
        """A pruned population from ``dense``: images ``order[offset:offset + flipped]`` hit."""
        hit = np.zeros(self.shape[-1], bool)
        hit[self.order[offset:offset + flipped]] = True
        return np.where(self.rng.random(self.shape) < self.pairing,
                        np.where(hit, self.draw(prob * 0.4), dense),
                        self.draw(np.where(hit, prob * 0.4, prob)))


def simulate(rng, reps, n, images, flipped):
    """``reps`` replications of a dense population, a pruned one and a noise-floor population of
    ``n`` models each, concatenated along the image axis: (n, reps * images) predictions."""
    sim = Simulated(rng, (reps, n, images))
    dense, prob = sim.dense()
    pruned, floor = sim.pruned(dense, prob, flipped), sim.dense()[0]
    return [a.transpose(1, 0, 2).reshape(n, reps * images).astype(np.int8)
            for a in (dense, pruned, floor)]


def per_replication_claim1(reps, images):
    """Claim 1's statistics (raw and floor-relative difference), one value per replication."""
    def stat(p):
        mode = {k: metrics.modal_labels(v, K) for k, v in p.items()}

        def pies(d, x):
            return (mode[d] != mode[x]).reshape(reps, images).sum(1)
        a, b = pies("d_sup", "p_sup"), pies("d_ce", "p_ce")
        fa, fb = pies("d_sup", "f_sup"), pies("d_ce", "f_ce")
        return np.concatenate([a - b, a / fa - b / fb])
    return stat


def run_simulation(n, flips_sup, flips_ce, reps=200, images=1000, seed=0):
    rng = np.random.default_rng(seed)
    pops = {}
    for m, f in (("sup", flips_sup), ("ce", flips_ce)):
        pops[f"d_{m}"], pops[f"p_{m}"], pops[f"f_{m}"] = simulate(rng, reps, n, images, f)
    iv = intervals.seed_interval(pops, per_replication_claim1(reps, images))
    shape = (2, reps)
    return (iv.estimate.reshape(shape), iv.low.reshape(shape), iv.high.reshape(shape))


def test_interval_validated_by_simulation():
    """7-seed populations, 200 replications, SupCon-like pruning flipping 3x more images than
    CE-like. The true value is the statistic's expectation at 7 seeds, estimated by the mean over
    the replications. For the raw and the floor-relative PIE-count difference: the 95% interval
    covers it in >= 90% of replications, is at most 2x as wide as the statistic's spread (3.92
    SD across replications), the verdict holds in most replications, and is contradicted in most
    when the effect is flipped; with no effect it rarely claims one."""
    est, low, high = run_simulation(7, 400, 100)
    truth = est.mean(1, keepdims=True)
    coverage = ((low <= truth) & (truth <= high)).mean(1)
    width = (high - low).mean(1) / (3.92 * est.std(1, ddof=1))
    assert (coverage >= 0.90).all(), coverage
    assert (width <= 2.0).all(), width
    assert (truth > 0).all()
    holds = np.mean([[claims.verdict(lo, hi) == HOLDS for lo, hi in zip(lo_, hi_)]
                     for lo_, hi_ in zip(low, high)], 1)
    assert (holds >= 0.8).all(), holds

    est, low, high = run_simulation(7, 100, 400, seed=1)  # the effect flipped
    contradicted = np.mean([[claims.verdict(lo, hi) == CONTRADICTED for lo, hi in zip(lo_, hi_)]
                            for lo_, hi_ in zip(low, high)], 1)
    assert (contradicted >= 0.8).all(), contradicted

    est, low, high = run_simulation(7, 250, 250, reps=100, seed=2)  # no effect
    decided = ((low > 0) | (high < 0)).mean(1)
    assert (decided <= 0.1).all(), decided


def test_claim4_interval_validated_by_simulation():
    """Claim 4 end to end on 100 simulated studies of 5 seeds: two methods x two schedules, each
    pair hitting its own 150 of 1,000 images (PIE sets unique to their pair, plus seed noise).
    The true value is the mean of the estimates over the replications. The deciding row's interval
    covers it in >= 90% of replications, is at most 2x the statistic's spread, and holds."""
    rng = np.random.default_rng(4)
    rows = []
    for _ in range(100):
        sim = Simulated(rng, (5, 1000))
        preds = {}
        for i, m in enumerate(("ce", "supcon")):
            dense, prob = sim.dense()
            preds[(m, "dense", 0.0)] = dense
            for j, s in enumerate(("gmp_early", "oneshot")):
                preds[(m, s, 0.9)] = sim.pruned(dense, prob, 150, offset=150 * (2 * i + j))
        ev = evidence(preds, methods=("ce", "supcon"), schedules=("gmp_early", "oneshot"))
        rows.append([r for r in claims.claim_4(ev) if r["decides"]][0])
    t = pd.DataFrame(rows)
    truth = t.estimate.mean()
    assert truth < 0
    assert ((t.ci_low <= truth) & (truth <= t.ci_high)).mean() >= 0.90
    assert (t.ci_high - t.ci_low).mean() <= 2 * 3.92 * t.estimate.std()
    assert (t.verdict == HOLDS).mean() >= 0.8


# ------------------------------------------------------------------------------------------------
# PIE counts, floor and ties
# ------------------------------------------------------------------------------------------------
def test_pie_counts_hand_example():
    dense = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 9, 5]])
    pruned = np.array([[0, 1, 2, 9, 4, 5], [1, 1, 2, 9, 4, 5], [0, 1, 2, 9, 4, 5]])
    floor = np.array([[0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 4, 4], [0, 7, 2, 3, 4, 4]])
    # dense modal [0, 1, 2, 3, 4, 5] (image 5 votes 5, 4, 5); no tied vote among these three models
    preds = {("ce", "dense", 0.0): dense, ("ce", "oneshot", 0.9): pruned, ("ce", "floor", 0.0): floor}
    row = claims.pie_counts(preds, K).iloc[0]
    assert row.pies == 1  # image 3
    assert row.floor == 1  # image 5 (floor modal 4)
    assert row.pies_over_floor == 1.0
    assert (row.ties_dense, row.ties_pruned, row.ties_floor) == (0, 0, 0)
    assert row.ci_low <= row.pies <= row.ci_high and row.models == 3 and row.floor_models == 3
    two = {("ce", "dense", 0.0): dense[:2], ("ce", "oneshot", 0.9): pruned[:2]}
    r2 = claims.pie_counts(two, K).iloc[0]
    # two models: image 0 pruned (0 vs 1) and image 5 dense (5 vs 4) are ties -> smallest class
    assert (r2.ties_dense, r2.ties_pruned) == (1, 1) and r2.pies == 2 and np.isnan(r2.floor)
    assert np.isnan(r2.ci_low)  # two seeds: no interval


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


def claim1_evidence(sup_flips, ce_flips, seed=0):
    rng = np.random.default_rng(seed)
    preds = {}
    for m, f in (("supcon", sup_flips), ("ce", ce_flips)):
        preds[(m, "dense", 0.0)] = population(rng)
        preds[(m, "floor", 0.0)] = population(rng)
        preds[(m, "oneshot", 0.9)] = population(rng, f)
    return evidence(preds, methods=("ce", "supcon"))


def test_claim1_superset_holds_and_flips():
    small, big = sets([100, 400], nested=True)
    t = pd.DataFrame(claims.claim_1(claim1_evidence(big, small)))
    assert len(t) == 2 and t.decides.all()
    assert (t.verdict == HOLDS).all(), t
    assert 250 < t.estimate.iloc[0] < 350  # 300 extra PIEs, give or take the noisy images
    t = pd.DataFrame(claims.claim_1(claim1_evidence(small, big)))
    assert (t.verdict == CONTRADICTED).all(), t


def test_claim1_identical_methods_cannot_be_told_apart_and_third_method():
    ev = claim1_evidence(range(300, 400), range(300, 400))
    ev.preds.update({("ce", *k[1:]): v for k, v in ev.preds.items() if k[0] == "supcon"})
    t = pd.DataFrame(claims.claim_1(ev))
    assert (t.estimate == 0).all() and (t.verdict == UNCLEAR).all()
    ev.preds.update({("simclr", *k[1:]): v for k, v in ev.preds.items() if k[0] == "supcon"})
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
    keys = {"d": ("ce", "dense", 0.0), "p": ("ce", "gmp_early", 0.9)}
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


def test_damage_difference_by_hand():
    dense = np.array([[0, 1, 2, 3]] * 3)
    pruned = np.array([[0, 1, 9, 9]] * 3)  # PIEs: images 2 and 3
    qd = np.ones((3, 4))
    qp = np.array([[1.0, 0.0, -1.0, np.nan]] * 3)  # deltas 0, -1, -2, (NaN left out)
    assert claims.damage_difference(dense, pruned, qd, qp, K) == pytest.approx(-2 - (-0.5))


def onset_evidence(counts, seed=0):
    """Onset points at begins 0.0125, 0.3875, 0.7625 with deterministic PIE sets of ``counts``
    images (plus the noisy ones), and gmp_late with none."""
    rng = np.random.default_rng(seed)
    begins = (0.0125, 0.3875, 0.7625)
    labels = ("gmp_early", "gmp@0.39-0.62", "gmp@0.76-1.00")
    preds = {("ce", "dense", 0.0): population(rng), ("ce", "gmp_late", 0.9): population(rng)}
    onset = {}
    for b, lab, c in zip(begins, labels, counts):
        preds[("ce", lab, 0.9)] = population(rng, sets([c])[0])
        onset[("ce", lab, 0.9)] = b
    return evidence(preds, onset=onset, schedules=("gmp_early", "gmp_late"))


def test_claim3_known_slope_and_flip():
    ev = onset_evidence((600, 400, 200))
    t = pd.DataFrame(claims.claim_3(ev))
    main = t[t.decides.astype(bool)].iloc[0]
    dense = ev.preds[("ce", "dense", 0.0)]
    counts = [claims.pie_count(dense, ev.preds[k], K) for k in sorted(ev.onset, key=ev.onset.get)]
    assert main.estimate == pytest.approx(np.polyfit(sorted(ev.onset.values()), counts, 1)[0])
    assert -600 < main.estimate < -470  # -400 PIEs over 0.75 of training
    assert main.verdict == HOLDS
    side = t[~t.decides.astype(bool)]
    assert len(side) == 1 and "gmp_early" in side.statistic.iloc[0]
    t = pd.DataFrame(claims.claim_3(onset_evidence((200, 400, 600))))
    assert t[t.decides.astype(bool)].verdict.iloc[0] == CONTRADICTED


def claim4_evidence(unique, seed=0):
    rng = np.random.default_rng(seed)
    pairs = [(m, s) for m in ("ce", "supcon") for s in ("gmp_early", "oneshot")]
    own = sets([300] * len(pairs)) if unique else [sets([300])[0]] * len(pairs)
    preds = {(m, "dense", 0.0): population(rng) for m in ("ce", "supcon")}
    for (m, s), f in zip(pairs, own):
        preds[(m, s, 0.9)] = population(rng, f)
    return evidence(preds, methods=("ce", "supcon"), schedules=("gmp_early", "oneshot"))


def test_claim4_unique_pie_sets_hold_shared_do_not():
    t = pd.DataFrame(claims.claim_4(claim4_evidence(True)))
    main = t[t.decides.astype(bool)]
    assert len(main) == 1 and main.verdict.iloc[0] == HOLDS and main.estimate.iloc[0] < -0.3
    assert set(t.comparison) >= {"same schedule, another method", "same method, another schedule"}
    floors = t[t.statistic.str.contains("random")]
    assert (floors.verdict == HOLDS).all()  # within-pair overlap is far above chance
    t = pd.DataFrame(claims.claim_4(claim4_evidence(False)))
    main = t[t.decides.astype(bool)].iloc[0]
    assert main.verdict != HOLDS and abs(main.estimate) < 0.05


def test_overlap_helpers_against_references():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 50)) < 0.3, rng.random((2, 50)) < 0.5
    ref = [[metrics.pie_overlap(x, y)["jaccard"] for y in b] for x in a]
    assert claims.jaccard_rows(a, b) == pytest.approx(np.array(ref))
    # random sets of 200 and 300 among 1000 images: Monte Carlo mean of the Jaccard index
    mc = np.mean([metrics.pie_overlap(np.isin(np.arange(1000), rng.choice(1000, 200, replace=False)),
                                      np.isin(np.arange(1000), rng.choice(1000, 300, replace=False)))
                  ["jaccard"] for _ in range(400)])
    assert claims.random_jaccard([200], [300], 1000)[0, 0] == pytest.approx(mc, abs=0.005)
    sp = claims.half_splits(5)
    assert len(sp) == 15 and all(len(set(x) | set(y)) == 4 for x, y in sp)
    assert len(claims.half_splits(30, max_splits=7)) == 7


# ------------------------------------------------------------------------------------------------
# the table and its Markdown
# ------------------------------------------------------------------------------------------------
def test_run_claims_markdown_and_summary():
    ev = claim1_evidence(*sets([400, 100], nested=True))
    t1 = claims.run_claims(ev)
    assert list(t1.columns) == list(claims.COLUMNS)
    assert set(t1.verdict) <= set(claims.VERDICTS)
    md = claims.claims_markdown(t1)
    assert md.count("\n") == len(t1) + 1 and "**holds**" in md
    counts = claims.pie_counts(ev.preds, K)
    text = claims.summary_markdown(t1, counts)
    for r in counts.itertuples():  # every PIE count appears next to its floor
        assert f"{r.schedule} {r.pies:,}" in text and f"floor {r.floor:,.0f}" in text
    assert "holds in all 2 comparisons" in text and "PIEs(supcon) - PIEs(ce): " in text
    assert "Nothing" in claims.summary_markdown(None)
