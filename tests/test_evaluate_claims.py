"""Population tables and the claims table on a hand-made run store (no training)."""
import numpy as np
import pandas as pd
import pytest
import torch

from pcl import claims, evaluate, study
from pcl.store import RunStore

N = 6


def _put(store, cfg, preds, acc=0.5):
    logits = torch.nn.functional.one_hot(torch.tensor(preds), 10).float() * 5
    feats = torch.rand(len(preds), 8, generator=torch.Generator().manual_seed(cfg.seed))
    hist = {"epochs": [{"seconds": 1.0}], "test_acc": acc, "sparsity": cfg.sparsity,
            "pruning_events": {}, "train_images": 10}
    store.finish(cfg, {}, hist, logits, feats)


@pytest.fixture
def store(tmp_path, smoke):
    st = RunStore(tmp_path / "runs")
    # dense CE: modal labels (ties -> smallest) = [0, 1, 2, 3, 4, 4]
    _put(st, smoke.run("ce", 0), [0, 1, 2, 3, 4, 5], 0.6)
    _put(st, smoke.run("ce", 1), [0, 1, 2, 3, 4, 4], 0.7)
    # gmp_early @ 0.9: modal = [0 (tie 0/1), 1, 2, 9, 4, 5] -> PIEs at images 3 and 5
    _put(st, smoke.run("ce", 0, "gmp_early", 0.9), [0, 1, 2, 9, 4, 5], 0.3)
    _put(st, smoke.run("ce", 1, "gmp_early", 0.9), [1, 1, 2, 9, 4, 5], 0.4)
    # gmp_late @ 0.9: identical to the dense modal labels -> no PIEs
    _put(st, smoke.run("ce", 0, "gmp_late", 0.9), [0, 1, 2, 3, 4, 4], 0.5)
    _put(st, smoke.run("ce", 1, "gmp_late", 0.9), [0, 1, 2, 3, 4, 4], 0.5)
    return st


def test_plan_counts(smoke):
    # per method: dense 2 seeds; GMP 2 schedules x 2 sparsities x 2 seeds; one-shot 2 x 2; onset 1 x 2
    assert len(study.plan(smoke, "dense")) == 4
    assert len(study.plan(smoke, "gmp")) == 16
    assert len(study.plan(smoke, "oneshot")) == 8
    assert len(study.plan(smoke, "onset")) == 4
    assert len(study.plan(smoke)) == 32
    assert len({c.run_hash() for c in study.plan(smoke)}) == 32
    with pytest.raises(ValueError, match="stage 'bogus'"):
        study.plan(smoke, "bogus")


def test_pie_table_hand_example(store, smoke):
    labels = np.arange(N) % 10
    pies = evaluate.pie_table(smoke, store, labels)
    early = pies[(pies.schedule == "gmp_early")].sort_values("image")
    assert early.pie.tolist() == [False, False, False, True, False, True]
    assert early.dense_modal.tolist() == [0, 1, 2, 3, 4, 4]
    assert early.pruned_modal.tolist() == [0, 1, 2, 9, 4, 5]
    assert pies[pies.schedule == "gmp_late"].pie.sum() == 0


def test_run_table_and_counts(store, smoke):
    rt = evaluate.run_table(smoke, store)
    assert len(rt) == 6
    assert rt[rt.schedule == "dense"].test_acc.sort_values().tolist() == [0.6, 0.7]
    counts = claims.pie_count_intervals(smoke, store, n_resamples=50).set_index("schedule")
    assert counts.loc["gmp_early", "pies"] == 2 and counts.loc["gmp_late", "pies"] == 0
    assert counts.loc["gmp_early", "ci_low"] <= 2 <= counts.loc["gmp_early", "ci_high"]


def test_claim3_early_vs_late(store, smoke):
    t1 = claims.claims_table(smoke, store, n_resamples=200)
    row = t1[t1.claim.str.startswith("3.")].iloc[0]
    assert row.estimate == 2  # 2 PIEs early - 0 late
    assert row.verdict in (claims.HOLDS, claims.UNCLEAR)
    md = claims.claims_markdown(t1)
    assert md.count("\n") == len(t1) + 1 and "| 3. Early pruning hurts most |" in md


@pytest.mark.parametrize("low,high,greater,expected", [
    (0.5, 2.0, True, claims.HOLDS), (-2.0, -0.5, True, claims.FAILS), (-1.0, 1.0, True, claims.UNCLEAR),
    (-2.0, -0.5, False, claims.HOLDS), (0.5, 2.0, False, claims.FAILS), (float("nan"), 1.0, True, claims.UNCLEAR),
])
def test_verdict(low, high, greater, expected):
    assert claims.verdict(low, high, 0.0, greater) == expected


def test_image_bootstrap_hand_example():
    values = np.array([1.0, 1, 1, 5, 5, 5, 1, 5])
    groups = np.array([False, False, False, True, True, True, False, True])
    p, lo, hi = claims.image_bootstrap(values, groups, n_resamples=200)
    assert p == 4.0 and lo == 4.0 and hi == 4.0  # groups are internally constant


def test_seed_bootstrap_constant_statistic():
    preds = {("ce", "dense", 0.0): np.zeros((3, 5), int)}
    assert claims.seed_bootstrap(preds, lambda d: 7.0, 50) == (7.0, 7.0, 7.0)


def test_seed_bootstrap_bias_correction_by_hand():
    """The interval is the resamples' percentile interval shifted by (mean of resamples - point).

    Reference: the same resamples drawn by hand with the same generator."""
    preds = {("ce", "dense", 0.0): np.array([[0], [1], [1]])}
    stat = lambda d: float(d[("ce", "dense", 0.0)].sum())  # noqa: E731
    p, lo, hi = claims.seed_bootstrap(preds, stat, n_resamples=400, seed=3)
    rng = np.random.default_rng(3)
    vals = np.array([preds[("ce", "dense", 0.0)][rng.integers(0, 3, 3)].sum() for _ in range(400)])
    bias = vals.mean() - 2.0
    assert p == 2.0
    assert lo == pytest.approx(np.quantile(vals, 0.025) - bias)
    assert hi == pytest.approx(np.quantile(vals, 0.975) - bias)


def test_umap_cached_under_a_stable_key(store, smoke, monkeypatch):
    """The embedding is stored under a key that does not depend on the process (hash seed)."""
    idx = np.array([0, 2, 3, 5])
    cfg = smoke.run("ce", 0)
    calls = []
    monkeypatch.setattr(evaluate.metrics, "umap_embedding",
                        lambda f, random_state=0: calls.append(1) or np.zeros((len(f), 2)))
    evaluate.umap_of_run(cfg, store, idx)
    evaluate.umap_of_run(cfg, store, idx)
    assert len(calls) == 1
    import hashlib
    digest = hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest()[:10]
    assert (store.path(cfg) / "eval" / f"umap-n4-{digest}-rs0.pt").exists()
