"""Every piece of Markdown the study generates, built from its tables (never typed): T1 and the
PIE counts for the README and notebooks 05 and 09, and the short summaries that end the analysis
notebooks (04, 06-08). The sentences change when the numbers do.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .claims import HOLDS, MAX_ACCURACY_GAP, MAX_ONSET_END, MIN_FLOOR, MIN_ONSETS, NOT_DECIDED, VERDICTS
from .intervals import MIN_UNITS

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
            (sch, s), (sch_b, s_b) = g.idxmin(), g.idxmax()
            text += (f"; pruned populations range from {_pct(g.min())} ({sch} @ {s:g}) to "
                     f"{_pct(g.max())} ({sch_b} @ {s_b:g})")
        lines.append(text + ".")
    pruned = runs[runs.sparsity > 0]
    if len(pruned):
        err = float((pruned.measured_sparsity - pruned.sparsity).abs().max())
        lines.append(f"- Measured sparsity equals the target in every pruned run to within {err:.1e}.")
    return "\n".join(lines)


def qscore_by_pie(qscores: pd.DataFrame, pies: pd.DataFrame) -> pd.DataFrame:
    """Mean population Q-Score of PIEs and of the other images per configuration (``pruned_pie``,
    ``pruned_rest``), and the dense population's on the same images (``dense_pie``, ``dense_rest``)."""
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
        lines.append(f"- **{r.method} {r.schedule} @ {r.sparsity:g}** ({r.pies:,} PIEs): dense Q-Score of "
                     f"PIEs {r.dense_pie:.4f} vs {r.dense_rest:.4f} for the rest; change under pruning "
                     f"{d_pie:+.4f} for PIEs vs {d_rest:+.4f} for the rest, a difference of "
                     f"{d_pie - d_rest:+.4f} (PIEs {'' if d_pie < d_rest else 'do not '}fare worse).")
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

    return "\n".join(f"- **{title}**: class silhouette {silhouette_score(e, labels):.3f} "
                     f"({len(e):,} test images)." for title, e in embeddings.items())


def _num(x: float) -> str:
    """A number for prose: integers with thousands separators, else 3 significant digits."""
    if not np.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if float(x).is_integer() or abs(x) >= 100 else f"{x:.3g}"


def _ci(lo: float, hi: float) -> str:
    return f"[{_num(lo)}, {_num(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "[no interval]"


def claims_markdown(t1: pd.DataFrame) -> str:
    """T1 as a Markdown table (for the README and the executed notebook), with notes on what its
    intervals cover and what its verdicts mean."""
    lines = ["| claim | comparison | statistic | estimate [95% CI] | verdict | notes |",
             "|---|---|---|---|---|---|"]
    for r in t1.itertuples():
        v = f"**{r.verdict}**" if r.decides else f"{r.verdict} (shown)"
        lines.append(f"| {r.claim} | {r.comparison} | {r.statistic} | "
                     f"{_num(r.estimate)} {_ci(r.ci_low, r.ci_high)} | {v} | {r.note} |")
    label = t1.interval.iloc[0] if len(t1) else ""
    notes = (f"Intervals: {label}. A PIE statistic depends on how many models vote, so each "
             "interval covers the statistic's expected value at the populations' size, not the "
             "value infinitely many seeds would give; comparisons are fair only between populations "
             "of equal size and matched accuracy. Verdicts: *holds* / *contradicted* when the "
             "interval excludes zero on the claim's / the other side, *cannot be told apart* "
             f"otherwise; *too few seeds* below {MIN_UNITS}; *not decided* where a confound makes "
             f"the comparison unfair (dense accuracies more than {100 * MAX_ACCURACY_GAP:g} points "
             f"apart, a noise floor below {MIN_FLOOR} PIEs, an onset sweep with fewer than "
             f"{MIN_ONSETS} begins or a window ending after {MAX_ONSET_END} of training). Rows "
             "marked 'shown' do not decide their claim.")
    return "\n".join(lines) + "\n\n" + notes


def counts_markdown(counts: pd.DataFrame, sparsity: float | None = None) -> str:
    """One line per method: its PIE counts at ``sparsity`` (default: the highest), each with the
    method's noise floor and the tied votes."""
    if counts is None or counts.empty:
        return "No pruned population is finished yet."
    s = counts.sparsity.max() if sparsity is None else sparsity
    lines = [f"PIE counts at sparsity {s} (95% intervals over seeds; the noise floor is the PIE "
             "count between two independent dense populations of the same method; tied votes are "
             "dense / pruned):"]
    for m, g in counts[counts.sparsity == s].groupby("method", sort=False):
        parts = [f"{r.schedule} {_num(r.pies)} {_ci(r.ci_low, r.ci_high)} ("
                 + (f"floor {_num(r.floor)} {_ci(r.floor_ci_low, r.floor_ci_high)}, "
                    f"{r.pies_over_floor:.2f}x floor" if np.isfinite(r.floor) else "no floor population")
                 + f"; ties {r.ties_dense}/{r.ties_pruned})" for r in g.itertuples()]
        lines.append(f"- **{m}**: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def summary_markdown(t1: pd.DataFrame | None, counts: pd.DataFrame | None = None,
                     sparsity: float | None = None) -> str:
    """A short summary generated from the tables: the PIE counts next to their floors, and per
    claim whether it is confirmed (every deciding row holds) and how its rows split."""
    out = [] if counts is None else [counts_markdown(counts, sparsity)]
    if t1 is not None and len(t1):
        scale = t1.scale.iloc[0] if "scale" in t1 and t1.scale.iloc[0] else ""
        out.append(f"Claims{f' at {scale}' if scale else ''} (verdicts from 95% intervals over "
                   "seeds; only deciding rows count):")
        for claim, g in t1.groupby("claim", sort=False):
            dec = g[g.decides.astype(bool)]
            out.append(f"- **{claim}**: " + (f"{_tally(dec.verdict)}. {_evidence(dec)}" if len(dec)
                                            else "no deciding comparison could be computed."))
    return "\n\n".join(out) if out else "Nothing to summarise yet."


def _tally(verdicts: pd.Series) -> str:
    """'confirmed' only where every deciding row holds; else how the rows split."""
    n = len(verdicts)
    counts = {v: int((verdicts == v).sum()) for v in VERDICTS}
    if counts[HOLDS] == n:
        return f"confirmed ({HOLDS} in " + ("the one comparison)" if n == 1 else f"all {n} comparisons)")
    return f"not confirmed: of {n} comparison{'s' * (n != 1)}, " + ", ".join(
        f"{c} {v}" for v, c in counts.items() if c)


def _evidence(dec: pd.DataFrame) -> str:
    """Every deciding row's estimate, interval and verdict, grouped by statistic."""
    row = lambda r: (f"{r.comparison} = {_num(r.estimate)} {_ci(r.ci_low, r.ci_high)} ({r.verdict}"
                     + (f": {r.note}" if r.verdict == NOT_DECIDED else "") + ")")
    return ". ".join(f"{stat}: " + "; ".join(map(row, h.itertuples()))
                     for stat, h in dec.groupby("statistic", sort=False)) + "."
