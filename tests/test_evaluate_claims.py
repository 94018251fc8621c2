"""Population tables and the claims table on a hand-made run store (no training)."""
import numpy as np
import pytest
import torch

from pcl import claims, evaluate, reports, study
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
    # noise floor (seeds 2, 3): modal = [0, 1, 2, 3, 3 (tie 3/4), 4] -> 1 floor PIE (image 4)
    _put(st, smoke.run("ce", 2), [0, 1, 2, 3, 4, 4], 0.6)
    _put(st, smoke.run("ce", 3), [0, 1, 2, 3, 3, 4], 0.6)
    return st


def test_plan_counts(smoke):
    # per method: dense 2 seeds; noise floor 2 seeds; GMP 2 schedules x 2 sparsities x 2 seeds;
    # one-shot 2 x 2; onset 1 x 2
    assert len(study.plan(smoke, "dense")) == 4
    assert [c.seed for c in study.plan(smoke, "floor")] == [2, 3, 2, 3]
    assert len(study.plan(smoke, "gmp")) == 16
    assert len(study.plan(smoke, "oneshot")) == 8
    assert len(study.plan(smoke, "onset")) == 4
    assert len(study.plan(smoke)) == 36
    assert len({c.run_hash() for c in study.plan(smoke)}) == 36
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
    assert len(rt) == 8
    assert rt[rt.schedule == "dense"].test_acc.sort_values().tolist() == [0.6, 0.7]
    assert sorted(rt[rt.schedule == "floor"].seed) == [2, 3]
    counts = claims.pie_count_intervals(smoke, store).set_index("schedule")
    assert counts.loc["gmp_early", "pies"] == 2 and counts.loc["gmp_late", "pies"] == 0
    assert (counts.floor == 1).all() and (counts.pies_over_floor == counts.pies).all()
    assert (counts.ties_dense == 1).all() and (counts.ties_floor == 1).all()  # image 5; image 4
    assert counts.loc["gmp_early", "ties_pruned"] == 1 and counts.loc["gmp_late", "ties_pruned"] == 0
    assert counts.ci_low.isna().all()  # two seeds: no interval


def test_claims_table_on_a_store(store, smoke):
    t1 = claims.claims_table(smoke, store)  # no dataset: prediction depth left out
    assert list(t1.columns) == list(claims.COLUMNS) and set(t1.verdict) == {claims.TOO_FEW}
    row = t1[t1.statistic == "PIEs(gmp_early) - PIEs(gmp_late)"].iloc[0]
    assert row.estimate == 2 and not row.decides  # 2 PIEs early - 0 late; shown, does not decide
    assert t1.claim.str.startswith("2.").sum() == 2  # Q-Score rows for both schedules
    md = reports.claims_markdown(t1)
    assert md.count("\n") == len(t1) + 3  # header, rule, rows, a blank line, the notes
    assert "| 3. Early pruning hurts most |" in md


def test_load_evidence_reads_per_model_arrays(store, smoke, monkeypatch):
    """Q-Scores of every model and prediction depth of the first pd_models models, from the
    cached probes (here: probes that agree with the final prediction everywhere, so depth 0)."""
    calls = []

    def probes(cfg, st, data, k, n):
        calls.append((cfg.seed, k, n))
        return np.tile(st.load_logits(cfg).argmax(1).numpy(), (3, 1))

    monkeypatch.setattr(evaluate, "probe_predictions", probes)
    ev = claims.load_evidence(smoke, store, data="sentinel")
    dense, early = ("ce", "dense", 0.0), ("ce", "gmp_early", 0.9)
    assert ev.preds[("ce", "floor", 0.0)].shape == (2, N) and ("ce", "floor", 0.0) not in ev.qscores
    assert ev.qscores[dense].shape == (2, N) and ev.qscores[early].shape == (2, N)
    assert ev.depths[early].shape == (smoke.pd_models, N) and (ev.depths[early] == 0).all()
    assert {c[1:] for c in calls} == {(smoke.knn_k, smoke.pd_train_images)}
    rows = {r["comparison"].split()[1]: r for r in claims.claim_2(ev) if "depth" in r["statistic"]}
    assert rows["gmp_early"]["estimate"] == 0
    assert np.isnan(rows["gmp_late"]["estimate"])  # no PIEs: nothing to compare
    assert rows["gmp_late"]["verdict"] == claims.TOO_FEW  # two seeds
    assert ev.accuracy == {"ce": pytest.approx(0.65)}  # dense seeds 0 and 1
    begins = evaluate.onset_begins(smoke)  # evaluate's onset points, each with its window
    assert {k.schedule for k in ev.onset} == set(begins) & {k.schedule for k in ev.preds}
    assert all(w[0] == begins[k.schedule] and w[1] > w[0] for k, w in ev.onset.items())


@pytest.mark.parametrize("low,high,greater,expected", [
    (0.5, 2.0, True, claims.HOLDS), (-2.0, -0.5, True, claims.CONTRADICTED),
    (-1.0, 1.0, True, claims.UNCLEAR), (-2.0, -0.5, False, claims.HOLDS),
    (0.5, 2.0, False, claims.CONTRADICTED), (float("nan"), 1.0, True, claims.UNCLEAR),
])
def test_verdict(low, high, greater, expected):
    assert claims.verdict(low, high, 0.0, greater) == expected


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


def test_study_table_is_cached_and_rebuilt_when_a_run_finishes(store, smoke, monkeypatch):
    """Computed once per set of finished runs: a second call reads the cache (the builder is not
    called again); another finished run invalidates it; the cache never makes the store invalid."""
    from pcl.clean_runs import not_a_store_reason
    from pcl.data import Dataset, Split

    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    data = Dataset(train=Split(torch.zeros(6, 3, 32, 32, dtype=torch.uint8), labels),
                   test=Split(torch.zeros(6, 3, 32, 32, dtype=torch.uint8), labels), name="hand")
    calls = []
    real = evaluate.pie_table
    monkeypatch.setattr(evaluate, "pie_table", lambda *a: calls.append(1) or real(*a))
    first = evaluate.study_table("pies", smoke, store, data=data)
    again = evaluate.study_table("pies", smoke, store, data=data)
    assert len(calls) == 1 and again.equals(first)
    assert again.equals(real(smoke, store, labels.numpy()))
    _put(store, smoke.run("ce", 0, "oneshot", 0.9), [0, 1, 2, 3, 4, 4])
    third = evaluate.study_table("pies", smoke, store, data=data)
    assert len(calls) == 2 and "oneshot" in set(third.schedule)
    assert len(list((store.root / ".tables").glob("*-pies-*.pkl"))) == 1  # superseded one removed
    assert not_a_store_reason(store.root) is None
    with pytest.raises(ValueError, match="unknown table 'bogus'"):
        evaluate.study_table("bogus", smoke, store)
