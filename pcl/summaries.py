"""Short Markdown summaries that end the analysis notebooks, built from the tables (never typed).

Each function takes the tidy tables a notebook already has and returns Markdown: the sentences a
reader would otherwise have to write by hand from the numbers, so they change when the numbers do.
(Notebooks 05 and 09 end with :func:`pcl.claims.summary_markdown`.)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

KEYS = ["method", "schedule", "sparsity"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def accuracy_summary(runs: pd.DataFrame) -> str:
    """Dense accuracy per method, the largest drop under pruning, and the measured sparsity."""
    if runs.empty:
        return "No finished runs yet."
    lines = []
    dense = runs[runs.schedule == "dense"].groupby("method").test_acc.agg(["mean", "std", "count"])
    for m, r in dense.iterrows():
        pruned = runs[(runs.method == m) & (runs.sparsity > 0)]
        text = f"- **{m}**: dense {_pct(r['mean'])} ± {_pct(r['std'])} ({int(r['count'])} seeds)"
        if len(pruned):
            g = pruned.groupby(["schedule", "sparsity"]).test_acc.mean()
            (sch, s), worst = g.idxmin(), g.min()
            (sch_b, s_b), best = g.idxmax(), g.max()
            text += (f"; pruned populations range from {_pct(worst)} ({sch} @ {s:g}) to "
                     f"{_pct(best)} ({sch_b} @ {s_b:g})")
        lines.append(text + ".")
    pruned = runs[runs.sparsity > 0]
    if len(pruned):
        err = float((pruned.measured_sparsity - pruned.sparsity).abs().max())
        lines.append(f"- Measured sparsity equals the target in every pruned run to within {err:.1e}.")
    return "\n".join(lines)


def qscore_by_pie(qscores: pd.DataFrame, pies: pd.DataFrame) -> pd.DataFrame:
    """Mean population Q-Score of PIEs and of the other images, per configuration; the dense
    population's values on the same images alongside (columns ``pruned_pie``,
    ``pruned_rest``, ``dense_pie``, ``dense_rest``)."""
    rows = []
    for (m, sch, s), p in pies.groupby(KEYS):
        if sch in ("dense", "floor"):
            continue
        q = qscores[(qscores.method == m) & (qscores.schedule == sch) & (qscores.sparsity == s)]
        qd = qscores[(qscores.method == m) & (qscores.schedule == "dense")]
        if q.empty or qd.empty:
            continue
        pie = p.sort_values("image").pie.to_numpy(bool)
        qp, qdd = q.sort_values("image").qscore.to_numpy(), qd.sort_values("image").qscore.to_numpy()
        rows.append({"method": m, "schedule": sch, "sparsity": s, "pies": int(pie.sum()),
                     "pruned_pie": np.nanmean(qp[pie]), "pruned_rest": np.nanmean(qp[~pie]),
                     "dense_pie": np.nanmean(qdd[pie]), "dense_rest": np.nanmean(qdd[~pie])})
    return pd.DataFrame(rows)


def qscore_summary(table: pd.DataFrame) -> str:
    """Sentences from :func:`qscore_by_pie`: are PIEs lower-Q already in the dense population, and
    do they lose more under pruning?"""
    if table.empty:
        return "No pruned population with Q-Scores yet."
    lines = []
    for r in table.itertuples():
        d_pie, d_rest = r.pruned_pie - r.dense_pie, r.pruned_rest - r.dense_rest
        lines.append(f"- **{r.method} {r.schedule} @ {r.sparsity:g}** ({r.pies:,} PIEs): dense Q-Score "
                     f"of PIEs {r.dense_pie:.4f} vs {r.dense_rest:.4f} for the rest; change under "
                     f"pruning {d_pie:+.4f} for PIEs vs {d_rest:+.4f} for the rest, a difference "
                     f"of {d_pie - d_rest:+.4f} "
                     f"({'PIEs fare worse' if d_pie < d_rest else 'PIEs do not fare worse'}).")
    return "\n".join(lines)


def depth_summary(depths: pd.DataFrame, pies: pd.DataFrame) -> str:
    """Mean prediction depth of each population, and of PIEs vs the rest where pruned."""
    if depths.empty:
        return "No prediction depths yet."
    lines = []
    for (m, sch, s), d in depths.groupby(KEYS):
        d = d.sort_values("image")
        text = f"- **{m} {sch}" + (f" @ {s:g}**" if s else "**") + f": mean depth {d.depth.mean():.2f}"
        p = pies[(pies.method == m) & (pies.schedule == sch) & (pies.sparsity == s)]
        if sch != "dense" and len(p) == len(d):
            pie = p.sort_values("image").pie.to_numpy(bool)
            text += (f"; PIEs {np.nanmean(d.depth.to_numpy()[pie]):.2f} vs the rest "
                     f"{np.nanmean(d.depth.to_numpy()[~pie]):.2f}")
        lines.append(text + f" ({int(d.models.iloc[0])} models, {int(d.taps.iloc[0])} taps).")
    return "\n".join(lines)


def umap_summary(embeddings: dict[str, np.ndarray], labels: np.ndarray) -> str:
    """How well the classes separate in each UMAP panel: the silhouette score of the true
    classes in the 2-D embedding (scikit-learn; 1 = tight separate clusters, 0 = overlapping)."""
    from sklearn.metrics import silhouette_score

    lines = []
    for title, e in embeddings.items():
        lines.append(f"- **{title}**: class silhouette {silhouette_score(e, labels):.3f} "
                     f"({len(e):,} test images).")
    return "\n".join(lines)
