"""The generated notebook summaries: numbers from constructed tables with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pcl import summaries


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
    text = summaries.accuracy_summary(_runs())
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
    t = summaries.qscore_by_pie(q, pies)
    r = t.iloc[0]
    assert (r.pies, r.pruned_pie, r.pruned_rest, r.dense_pie, r.dense_rest) == (2, 0.5, 0.5, 1.5, 3.5)
    text = summaries.qscore_summary(t)
    # change: PIEs 0.5 - 1.5 = -1.0, rest 0.5 - 3.5 = -3.0 -> difference +2, PIEs do not fare worse
    assert "-1.0000 for PIEs vs -3.0000 for the rest, a difference of +2.0000" in text
    assert "PIEs do not fare worse" in text


def test_depth_summary_pies_vs_rest():
    d = pd.DataFrame({"method": "m", "schedule": "gmp_late", "sparsity": 0.9, "image": [0, 1, 2],
                      "depth": [6.0, 2.0, 1.0], "models": 3, "taps": 12})
    pies = pd.DataFrame({"method": "m", "schedule": "gmp_late", "sparsity": 0.9,
                         "image": [0, 1, 2], "pie": [True, False, False]})
    text = summaries.depth_summary(d, pies)
    assert "mean depth 3.00; PIEs 6.00 vs the rest 1.50 (3 models, 12 taps)" in text


def test_umap_summary_matches_sklearn_silhouette():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    apart = rng.normal(size=(100, 2)) * 0.1 + labels[:, None] * 10
    mixed = rng.normal(size=(100, 2))
    text = summaries.umap_summary({"apart": apart, "mixed": mixed}, labels)
    assert f"**apart**: class silhouette {silhouette_score(apart, labels):.3f}" in text
    assert silhouette_score(apart, labels) > 0.9 and abs(silhouette_score(mixed, labels)) < 0.2
