"""All generated Markdown (notebook summaries, T1, PIE counts): numbers from constructed tables
with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pcl import claims, reports
from pcl.keys import PopKey


def _runs():
    rows = []
    for seed, acc in enumerate([0.6, 0.7]):
        rows.append({"method": "ce", "schedule": "dense", "sparsity": 0.0, "seed": seed,
                     "test_acc": acc, "measured_sparsity": 0.0})
    for sch, acc in (("gmp_early", 0.4), ("oneshot", 0.5)):
        rows.append({"method": "ce", "schedule": sch, "sparsity": 0.9, "seed": 0, "test_acc": acc,
                     "measured_sparsity": 0.9})
    return pd.DataFrame(rows)


def test_accuracy_summary_hand_example():
    text = reports.accuracy_summary(_runs())
    # mean 0.65, sd (ddof 1) of [0.6, 0.7] = 0.0707; worst gmp_early 40 %, best oneshot 50 %
    assert "dense 65.0 % ± 7.1 % (2 seeds)" in text
    assert "from 40.0 % (gmp_early @ 0.9) to 50.0 % (oneshot @ 0.9)" in text
    assert "to within 0.0e+00" in text


def test_qscore_by_pie_hand_example():
    img = np.arange(4)
    q = pd.concat([
        pd.DataFrame({"method": "m", "schedule": "dense", "sparsity": 0.0, "image": img,
                      "qscore": [1.0, 2.0, 3.0, 4.0]}),
        pd.DataFrame({"method": "m", "schedule": "oneshot", "sparsity": 0.9, "image": img[::-1],
                      "qscore": [0.0, 1.0, 1.0, 0.0][::-1]})])
    pies = pd.DataFrame({"method": "m", "schedule": "oneshot", "sparsity": 0.9, "image": img,
                         "pie": [True, True, False, False]})
    t = reports.qscore_by_pie(q, pies)
    r = t.iloc[0]
    assert (r.pies, r.pruned_pie, r.pruned_rest, r.dense_pie, r.dense_rest) == (2, 0.5, 0.5, 1.5, 3.5)
    text = reports.qscore_summary(t)
    # change: PIEs 0.5 - 1.5 = -1.0, rest 0.5 - 3.5 = -3.0 -> difference +2, PIEs do not fare worse
    assert "-1.0000 for PIEs vs -3.0000 for the rest, a difference of +2.0000" in text
    assert "PIEs do not fare worse" in text


def test_depth_summary_pies_vs_rest():
    d = pd.DataFrame({"method": "m", "schedule": "gmp_late", "sparsity": 0.9, "image": [0, 1, 2],
                      "depth": [6.0, 2.0, 1.0], "models": 3, "taps": 12})
    pies = pd.DataFrame({"method": "m", "schedule": "gmp_late", "sparsity": 0.9,
                         "image": [0, 1, 2], "pie": [True, False, False]})
    text = reports.depth_summary(d, pies)
    assert "mean depth 3.00; PIEs 6.00 vs the rest 1.50 (3 models, 12 taps)" in text


def test_umap_summary_matches_sklearn_silhouette():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    apart = rng.normal(size=(100, 2)) * 0.1 + labels[:, None] * 10
    mixed = rng.normal(size=(100, 2))
    text = reports.umap_summary({"apart": apart, "mixed": mixed}, labels)
    assert f"**apart**: class silhouette {silhouette_score(apart, labels):.3f}" in text
    assert silhouette_score(apart, labels) > 0.9 and abs(silhouette_score(mixed, labels)) < 0.2


def _t1(verdicts, decides=None):
    rows = []
    for i, v in enumerate(verdicts):
        rows.append({"claim": claims.TITLES[1], "comparison": f"c{i}", "statistic": "s",
                     "estimate": 10.0 * i, "ci_low": 1.0, "ci_high": 2.0,
                     "interval": "95% delete-one jackknife over seeds (5 subsets of 4); covers the "
                                 "expected value at 5 seeds",
                     "verdict": v, "decides": True if decides is None else decides[i],
                     "note": "why" if v == claims.NOT_DECIDED else "", "scale": "toy"})
    return pd.DataFrame(rows, columns=list(claims.COLUMNS))


def test_claims_markdown_rows_and_notes():
    t1 = _t1([claims.HOLDS, claims.NOT_DECIDED, claims.UNCLEAR], decides=[True, True, False])
    md = reports.claims_markdown(t1)
    table, notes = md.split("\n\n")
    assert table.count("\n") == len(t1) + 1
    assert "| **holds** |" in table and "| **not decided** | why |" in table
    assert "cannot be told apart (shown)" in table
    assert "covers the expected value at 5 seeds" in notes and f"below {claims.MIN_FLOOR} PIEs" in notes


def test_summary_confirms_only_where_every_deciding_row_holds():
    text = reports.summary_markdown(_t1([claims.HOLDS, claims.HOLDS, claims.UNCLEAR],
                                        decides=[True, True, False]))
    assert "confirmed (holds in all 2 comparisons)" in text and "not confirmed" not in text
    text = reports.summary_markdown(_t1([claims.HOLDS, claims.NOT_DECIDED, claims.CONTRADICTED]))
    assert "not confirmed: of 3 comparisons, 1 holds, 1 contradicted, 1 not decided" in text
    assert "c1 = 10 [1, 2] (not decided: why)" in text
    assert "Nothing" in reports.summary_markdown(None)


def test_counts_markdown_puts_every_count_next_to_its_floor():
    rng = np.random.default_rng(0)
    y = np.arange(400) % 10
    preds = {}
    for m in ("ce", "supcon"):
        for sch, noisy in (("dense", 40), ("floor", 40), ("oneshot", 120)):
            p = np.tile(y, (5, 1))
            p[:, :noisy] = rng.integers(0, 10, (5, noisy))
            preds[PopKey(m, sch, 0.9 if sch == "oneshot" else 0.0)] = p
    counts = claims.pie_counts(preds, 10)
    text = reports.counts_markdown(counts)
    for r in counts.itertuples():
        assert f"{r.schedule} {r.pies:,}" in text and f"floor {r.floor:,.0f}" in text
    assert text.count("- **") == 2
