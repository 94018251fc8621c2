"""The study's figures (F0-F9). Tidy tables in, a matplotlib Figure out (constrained layout, style
from :mod:`pcl.style`: no text runs over another, which ``tests/test_plots.py`` checks); :func:`save`
writes PNG (for reading) and PDF (for papers), stamped with the scale they were made at."""
from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from scipy import stats

from . import metrics, schedules, style
from .config import RunConfig
from .data import CLASSES
from .gallery import upscale_nearest

#: Confidence of the t-intervals over seeds of F1 and F8's accuracy.
CONFIDENCE = 0.95
#: What F4 can show: the matrices of :func:`pcl.claims.overlap_matrix`.
OVERLAP_STATISTICS = ("overlap coefficient", "Jaccard")


def save(fig: plt.Figure, name: str, outdir: str | Path, label: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf under ``outdir`` (atomically), stamped with ``label``."""
    Path(outdir).mkdir(parents=True, exist_ok=True)
    style.stamp(fig, label)
    paths = []
    for ext in ("png", "pdf"):
        p, tmp = Path(outdir, f"{name}.{ext}"), Path(outdir, f".{name}.{ext}.tmp")
        # no creation date in the PDF: re-running a notebook leaves an unchanged figure unchanged
        fig.savefig(tmp, format=ext, dpi=130 if ext == "png" else None, bbox_inches="tight",
                    metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(tmp.replace(p))
    return paths


def _class_name(i: int) -> str:
    return CLASSES[i] if 0 <= i < len(CLASSES) else str(i)


def _mains(present) -> list[str]:
    """The main schedules (registry order) among ``present``."""
    return [s for s in schedules.main_schedules() if s in set(present)]


def _at(d: pd.DataFrame) -> str:
    """' @ sparsity s' when the pruned rows of ``d`` have one sparsity."""
    sp = d[d.schedule != "dense"].sparsity.unique()
    return f" @ sparsity {sp[0]:g}" if len(sp) == 1 else ""


def _compare(ax: plt.Axes, d: pd.DataFrame, ref: str) -> None:
    """``y`` with its interval ``lo``-``hi`` per method (colour) and main schedule (marker).

    Several sparsities: one line per method and schedule along sparsity, from the reference rows
    (schedule 'dense', sparsity 0). One sparsity: a point per method and schedule side by side,
    the reference first, named ``ref`` on the axis."""
    mains, ms = _mains(d.schedule), style.method_order(d.method)
    colours, st = style.method_colors(ms), style.schedule_styles()
    points = d[d.schedule.isin(mains)].sparsity.nunique() <= 1
    cats = (["dense"] if (d.schedule == "dense").any() else []) + mains
    for j, m in enumerate(ms):
        for i, s in enumerate(cats if points else mains):
            g = d[(d.method == m) & d.schedule.isin([s] if points else [s, "dense"])].sort_values("sparsity")
            if g.empty:
                continue
            x = np.full(len(g), i + (j - (len(ms) - 1) / 2) * 0.7 / len(ms)) if points else g.sparsity
            err = np.clip(np.nan_to_num(np.vstack([g.y - g.lo, g.hi - g.y])), 0, None)
            ax.errorbar(x, g.y, err, color=colours[m], capsize=3, ms=6,
                        **st[s] | ({"ls": "none"} if points else {}))
    if points:
        ax.set_xticks(range(len(cats)), [ref.replace(" ", "\n") if c == "dense" else c for c in cats])
    else:
        ax.set_xlabel(f"sparsity (0: {ref})")


def _accuracy(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean test accuracy of the dense and main-schedule populations, t-interval over seeds."""
    r = runs[runs.schedule.isin(["dense", *schedules.main_schedules()])]
    d = r.groupby(["method", "schedule", "sparsity"]).test_acc.agg(["mean", "std", "count"]).reset_index()
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, d["count"] - 1) * d["std"] / np.sqrt(d["count"])
    return d.assign(y=d["mean"], lo=d["mean"] - half, hi=d["mean"] + half)


def _pies(counts: pd.DataFrame) -> pd.DataFrame:
    """PIE counts of the main schedules with their intervals, and each method's noise floor
    (PIEs between two dense populations) as its reference row."""
    c = counts[counts.schedule.isin(schedules.main_schedules())]
    d = c.assign(y=c.pies, lo=c.get("ci_low", np.nan), hi=c.get("ci_high", np.nan))
    if "floor" not in c:
        return d
    f = c.drop_duplicates("method")
    return pd.concat([d, pd.DataFrame({"method": f.method, "schedule": "dense", "sparsity": 0.0,
                                       "y": f.floor, "lo": f.get("floor_ci_low", np.nan),
                                       "hi": f.get("floor_ci_high", np.nan)})], ignore_index=True)


def _comparison(d: pd.DataFrame, ref: str, ylabel: str, title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    _compare(ax, d, ref)
    ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    style.legend(fig, style.method_order(d.method), _mains(d.schedule))
    return fig


def fig_accuracy(runs: pd.DataFrame) -> plt.Figure:
    """F1: test accuracy per method and main schedule (mean, t-interval over seeds), along
    sparsity from the dense models, or side by side at the study's one sparsity."""
    d = _accuracy(runs)
    return _comparison(d, "dense", "test accuracy", f"F1 - test accuracy{_at(d)}\n"
                       f"mean, {CONFIDENCE:.0%} t-interval over seeds")


def fig_pie_counts(counts: pd.DataFrame) -> plt.Figure:
    """F2: number of PIEs per method and main schedule with their intervals, next to each
    method's noise floor (``counts``: :func:`pcl.claims.pie_count_intervals`'s table)."""
    d = _pies(counts)
    how = f"\nintervals: {counts.interval.iloc[0]}" if "interval" in counts and len(counts) else ""
    return _comparison(d, "noise floor", "number of PIEs (test images)", f"F2 - PIEs{_at(d)}; "
                       f"noise floor: PIEs between two dense populations{how}")


def fig_pies_per_class(pies: pd.DataFrame, sparsity: float,
                       pair: tuple[str, str] | None = None) -> plt.Figure:
    """F3: PIEs per true class at ``sparsity``, split into common to two methods, and unique.

    ``pair`` = (a, b); default: the second and the first method of the table in registry order
    (SupCon and CE, as in the paper)."""
    if pair is None:
        ms = style.method_order(pies.method.unique())
        pair = (ms[1], ms[0]) if len(ms) > 1 else ("supcon", "ce")
    ma, mb = pair
    rows = []
    for sch in _mains(pies.schedule):
        a, b = (pies[(pies.method == m) & (pies.schedule == sch) & (pies.sparsity == sparsity)]
                .sort_values("image") for m in pair)
        if len(a) and len(b):
            rows.append((sch, metrics.common_unique(a.pie.to_numpy(), b.pie.to_numpy(), a.label.to_numpy())))
    n = max(1, len(rows))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 1.4, 3.6), sharey=True, squeeze=False,
                             layout="constrained")
    colours = style.method_colors(pair) | {"common": style.OTHER}
    kinds = {k: (f"{style.method_label(m)} only" if m != k else k, colours[m])
             for k, m in (("common", "common"), ("only_a", ma), ("only_b", mb))}
    for ax, (sch, cu) in zip(axes[0], rows, strict=False):
        wide = cu.pivot(index="class", columns="kind", values="count").reindex(columns=list(kinds))
        bottom = np.zeros(len(wide))
        for kind, (name, colour) in kinds.items():
            ax.bar(range(len(wide)), wide[kind], bottom=bottom, color=colour, label=name)
            bottom += wide[kind].to_numpy()
        ax.set_xticks(range(len(wide)), [_class_name(i) for i in wide.index], rotation=90, fontsize=8)
        ax.set_title(sch)
    axes[0][0].set_ylabel("PIEs (by true label)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
    fig.suptitle(f"F3 - PIEs per class @ sparsity {sparsity:g}: common to "
                 f"{style.method_label(ma)} and {style.method_label(mb)}, and unique", fontsize=10)
    return fig


def fig_overlap(matrix: pd.DataFrame, sparsity: float,
                statistic: str = "overlap coefficient") -> plt.Figure:
    """F4: the overlap of the PIE sets of every pair of configurations at ``sparsity``, with
    each configuration's split-half overlap on the diagonal (claim 4 compares the two).

    ``matrix``: one of :func:`pcl.claims.overlap_matrix`'s, indexed by 'method schedule';
    ``statistic`` names it (one of :data:`OVERLAP_STATISTICS`)."""
    if statistic not in OVERLAP_STATISTICS or list(matrix.index) != list(matrix.columns):
        raise ValueError(f"F4 draws a matrix with the same index and columns (got {list(matrix.index)}"
                         f" and {list(matrix.columns)}) of a statistic allowed in {OVERLAP_STATISTICS}"
                         f" (got {statistic!r})")
    v, n = matrix.to_numpy(float), len(matrix)
    fig, ax = plt.subplots(figsize=(2.6 + 0.75 * n, 1.4 + 0.6 * n), layout="constrained")
    im = ax.imshow(v, vmin=0, vmax=1, cmap="viridis")
    for (i, j), x in np.ndenumerate(v):
        ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=8, color="w" if x < 0.6 else "k")
    for i in range(n):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="w", lw=2))
    ms = [str(k).partition(" ")[::2] for k in matrix.index]  # (method, schedule)
    names = [f"{style.method_label(m)} {s}" for m, s in ms]
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    colours = style.method_colors(m for m, _ in ms)
    for t, (m, _) in zip([*ax.get_xticklabels(), *ax.get_yticklabels()], ms + ms, strict=True):
        t.set_color(colours[m])
    fig.colorbar(im, ax=ax, label=statistic)
    fig.suptitle(f"F4 - {statistic} of PIE sets @ sparsity {sparsity:g}\n"
                 "diagonal (framed): split-half overlap within the configuration", fontsize=10)
    return fig


def _paired(table: pd.DataFrame, pies: pd.DataFrame, value: str, sparsity: float) -> list:
    out = []
    for m in style.method_order(table.method.unique()):
        dense = table[(table.method == m) & (table.schedule == "dense")].sort_values("image")
        for sch in _mains(table.schedule):
            pr, pie = (t[(t.method == m) & (t.schedule == sch) & (t.sparsity == sparsity)]
                       .sort_values("image") for t in (table, pies))
            if len(dense) and len(pr) and len(pie):
                out.append((m, sch, dense[value].to_numpy(), pr[value].to_numpy(), pie.pie.to_numpy()))
    return out


def _scatter_grid(pairs: list, title: str, what: str, jitter: float = 0.0) -> plt.Figure:
    """Dense vs pruned value per image, one panel per configuration, PIEs in the method's colour."""
    cols = min(3, max(1, len(pairs)))
    rows = int(np.ceil(max(1, len(pairs)) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows + 0.4), squeeze=False,
                             layout="constrained")
    rng = np.random.default_rng(0)
    colours = style.method_colors(p[0] for p in pairs)
    for ax, (m, sch, x, y, pie) in zip(axes.flat, pairs, strict=False):
        jx, jy = rng.uniform(-jitter, jitter, (2, len(x)))
        ax.scatter((x + jx)[~pie], (y + jy)[~pie], s=2, alpha=0.25, color=style.OTHER,
                   label="other images", rasterized=True)
        ax.scatter((x + jx)[pie], (y + jy)[pie], s=5, alpha=0.8, color=colours[m],
                   label=f"PIEs ({pie.sum()})", rasterized=True)
        finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
        if finite.size:
            ax.plot([finite.min(), finite.max()], [finite.min(), finite.max()], "k--", lw=0.8)
        ax.set(title=f"{style.method_label(m)} {sch}", xlabel=f"dense {what}", ylabel=f"pruned {what}")
        ax.legend(fontsize=6, markerscale=2, loc="upper left")
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return fig


def fig_qscore(qscores: pd.DataFrame, pies: pd.DataFrame, sparsity: float) -> plt.Figure:
    """F5: Q-Score per image, dense vs pruned population mean, PIEs highlighted, y = x line."""
    return _scatter_grid(_paired(qscores, pies, "qscore", sparsity), f"F5 - Q-Score per test "
                         f"image, dense vs pruned @ sparsity {sparsity:g}", "Q-Score")


def fig_depth(depths: pd.DataFrame, pies: pd.DataFrame, sparsity: float) -> plt.Figure:
    """F6: prediction depth, dense vs pruned per image (jittered: depths are few values)."""
    return _scatter_grid(_paired(depths, pies, "depth", sparsity), "F6 - prediction depth per "
                         f"test image, dense vs pruned @ sparsity {sparsity:g}", "depth", 0.25)


def fig_depth_distributions(depths: pd.DataFrame, pies: pd.DataFrame, sparsity: float) -> plt.Figure:
    """F6b: distribution of prediction depth, PIEs vs other images, per configuration
    (a row per method, a column per pruned schedule at ``sparsity``)."""
    keys = ["method", "schedule", "sparsity", "image"]
    d = depths.merge(pies[[*keys, "pie"]], on=keys, how="inner")
    d = d[(d.sparsity == sparsity) & ~d.schedule.isin(["dense", "floor"])]
    ms, cols = style.method_order(d.method), style.schedule_order(d.schedule)
    cols = [s for s in cols if s in set(d.schedule)]
    fig, axes = plt.subplots(max(1, len(ms)), max(1, len(cols)), squeeze=False, sharex=True,
                             figsize=(2.6 * max(1, len(cols)) + 1.6, 2.1 * max(1, len(ms)) + 0.6),
                             layout="constrained")
    colours = style.method_colors(ms)
    bins = np.arange(np.floor(d.depth.min()), np.ceil(d.depth.max()) + 2) - 0.5 if len(d) else 10
    for (i, m), (j, s) in itertools.product(enumerate(ms), enumerate(cols)):
        ax, g = axes[i][j], d[(d.method == m) & (d.schedule == s)]
        ax.hist(g.depth[~g.pie], bins, density=True, histtype="step", color=style.OTHER)
        ax.hist(g.depth[g.pie], bins, density=True, histtype="step", color=colours[m], lw=1.5)
        ax.set_title(s if i == 0 else "", fontsize=9)
        ax.set(ylabel=f"{style.method_label(m)}: density" if j == 0 else "",
               xlabel="prediction depth" if i == len(ms) - 1 else "")
    style.legend(fig, ms, other="other images")
    fig.suptitle(f"F6b - prediction depth distribution @ sparsity {sparsity:g}: PIEs (the "
                 "method's colour) vs other images", fontsize=10)
    return fig


def fig_umap(embeddings: dict[str, np.ndarray], labels: np.ndarray) -> plt.Figure:
    """F7: 2-D UMAP of one model's test features per panel, coloured by class."""
    n = len(embeddings)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.8), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("tab10")
    for ax, (title, emb) in zip(axes[0], embeddings.items(), strict=True):
        ax.scatter(emb[:, 0], emb[:, 1], c=cmap(labels % 10), s=1.5, alpha=0.6, rasterized=True)
        ax.set(title=title, xticks=[], yticks=[])
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i), label=c) for i, c in enumerate(CLASSES)]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=7)
    fig.suptitle("F7 - UMAP of test features (one model each)", fontsize=10)
    return fig


def fig_schedules(runs: pd.DataFrame, counts: pd.DataFrame, sparsity: float,
                  onset: pd.DataFrame | None = None) -> plt.Figure:
    """F8: schedule effect at ``sparsity``: PIEs and accuracy per main schedule and method, and
    the pruning-onset sweep (``onset``: rows (method, begin, pies) of it) when given."""
    ncols = 3 if onset is not None and len(onset) else 2
    fig, axes = plt.subplots(1, ncols, figsize=(3.6 * ncols + 1.4, 3.6), layout="constrained")
    c, d = _pies(counts), _accuracy(runs)
    _compare(axes[0], c[c.sparsity.isin([0.0, sparsity])], "noise floor")
    _compare(axes[1], d[d.sparsity.isin([0.0, sparsity])], "dense")
    axes[0].set(title="PIEs (interval over seeds)", ylabel="number of PIEs")
    axes[1].set(title=f"accuracy (mean, {CONFIDENCE:.0%} t-interval)", ylabel="test accuracy")
    ms = style.method_order({*c.method, *d.method})
    if ncols == 3:
        for m, g in onset.sort_values("begin").groupby("method"):
            err = [g.pies - g.ci_low, g.ci_high - g.pies] if "ci_low" in g else None
            axes[2].errorbar(g.begin, g.pies, yerr=err, marker="o", capsize=3,
                             color=style.method_colors(ms)[m])
        axes[2].set(title="onset sweep (interval over seeds)", xlabel="GMP begin (fraction of training)",
                    ylabel="number of PIEs")
    mains = _mains([*c.schedule, *d.schedule])
    style.legend(fig, ms, mains)
    fig.suptitle(f"F8 - schedule effect @ sparsity {sparsity:g}: {' vs '.join(mains)}"
                 + ("; onset of GMP" if ncols == 3 else ""), fontsize=10)
    return fig


def fig_training_curves(histories: dict[str, dict]) -> plt.Figure:
    """F0: training loss per epoch of a few runs (``histories``: label -> stored history), one
    panel per phase (their losses differ in scale), with the sparsity (grey, right axis) showing
    where pruning happens."""
    phases = {k: list(dict.fromkeys(r["phase"] for r in h["epochs"])) for k, h in histories.items()}
    cols = max([1, *map(len, phases.values())])
    fig, axes = plt.subplots(len(histories), cols, figsize=(3.4 * cols + 0.4, 2.6 * len(histories)),
                             squeeze=False, layout="constrained")
    colours = style.method_colors(histories)
    for row, (label, h) in zip(axes, histories.items(), strict=True):
        e = pd.DataFrame(h["epochs"])
        for ax, phase in zip(row, phases[label], strict=False):
            g = e[e.phase == phase]
            ax.plot(g.epoch, g.loss, marker=".", color=colours[label])
            ax.set(title=f"{label}: {phase} (test acc {h['test_acc']:.3f})", xlabel="epoch",
                   ylabel="training loss", xlim=(g.epoch.min() - 0.5, g.epoch.max() + 0.5))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            if "sparsity" in g and g.sparsity.max() > 0:
                tw = ax.twinx()
                tw.plot(g.epoch, g.sparsity, ":", color="0.5")
                tw.set(ylim=(0, 1), ylabel="sparsity")
        for ax in row[len(phases[label]):]:
            ax.axis("off")
    fig.suptitle("F0 - training loss per phase (dotted grey: sparsity, where pruning happens)", fontsize=10)
    return fig


def fig_gmp_schedules(configs: dict[str, RunConfig], events: dict[str, list] | None = None,
                      total_steps: int | None = None) -> plt.Figure:
    """F0: each schedule's target sparsity along the pruned phase (``schedule.target``) for the
    runs ``configs`` (label -> config), with the sparsity measured after every pruning event of
    a real run (``events``: label -> [(step, target, measured)]; ``total_steps``: the phase's)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4), layout="constrained")
    t = np.linspace(0, 1, 400)
    st = style.schedule_styles(configs)
    colours = style.method_colors(c.method for c in configs.values())
    for name, cfg in configs.items():
        ax.plot(t, [schedules.get(cfg.pruning).target(cfg, x) for x in t], ls=st[name]["ls"],
                color=colours[cfg.method], label=f"{name}: target")
        ev = (events or {}).get(name)
        if ev and total_steps:
            ax.plot(np.array([x[0] for x in ev]) / total_steps, [x[2] for x in ev], ls="none",
                    marker=st[name]["marker"], ms=4, mfc="none", color=colours[cfg.method],
                    label=f"{name}: measured")
    ax.set(xlabel="fraction of the pruned phase's steps", ylabel="sparsity", ylim=(-0.03, 1.03))
    fig.legend(loc="outside right center", fontsize=8)
    fig.suptitle("F0 - where each schedule prunes: target sparsity (lines), measured (markers)", fontsize=10)
    return fig


# F9: the PIE gallery (selection by pcl.gallery; these functions only draw)
GALLERY_COLS = 6  # images per row of a panel
GALLERY_UPSCALE = 4  # every 32x32 pixel becomes a 4x4 block (nearest neighbour)
_CELL_W, _CELL_H, _PANEL_TOP, _PANEL_BOTTOM = 0.92, 1.1, 0.4, 0.32  # inches


def _gallery_panel(sub, panel, pics: np.ndarray, rows: int, cols: int) -> None:
    """Draw one panel into a subfigure: images in rule order, three caption lines under each."""
    sub.suptitle(panel.title, fontsize=8)
    h = rows * _CELL_H + _PANEL_TOP + _PANEL_BOTTOM
    axes = sub.subplots(rows, cols, squeeze=False,
                        gridspec_kw={"hspace": 0.5, "wspace": 0.12, "left": 0.03, "right": 0.97,
                                     "top": 1 - _PANEL_TOP / h, "bottom": _PANEL_BOTTOM / h})
    for ax in axes.flat:
        ax.set_axis_off()
    if len(panel.picked) == 0:
        axes[0][0].text(0, 0.5, "unique PIEs: none" if panel.kept_by else "PIEs: none",
                        fontsize=8, transform=axes[0][0].transAxes)
        return
    for ax, pic, r in zip(axes.flat, pics, panel.picked.itertuples(index=False), strict=False):
        ax.imshow(pic, interpolation="nearest")
        for j, (k, v) in enumerate((("true", r.label), ("dense", r.dense_modal), ("pruned", r.pruned_modal))):
            color = "0.1" if j == 0 else "tab:green" if v == r.label else "tab:red"
            ax.annotate(f"{k} {_class_name(v)}", xy=(0.5, 0), xycoords="axes fraction",
                        xytext=(0, -1.5 - 6.5 * j), textcoords="offset points", ha="center", va="top",
                        fontsize=5.5, color=color)


def _gallery_figure(panels: list, test_images, name: str, what: str, cols: int, upscale: int) -> plt.Figure:
    """Panels on a grid: one row per (method, kept_by), one column per schedule."""
    x = np.asarray(test_images)
    if not panels:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no pruned configuration at this sparsity", ha="center", va="center")
        fig.suptitle(f"{name} @ sparsity ?: {what}", fontsize=10)
        return fig
    shown = max(1, max(len(p.picked) for p in panels))
    for p in panels:
        if len(p.picked) and p.images.max() >= len(x):
            raise ValueError(f"panel {p.title!r} shows image {p.images.max()} but test_images "
                             f"has only {len(x)}")
    cols = max(1, min(cols, shown))
    rows = int(np.ceil(shown / cols))
    row_keys = list(dict.fromkeys((p.method, p.kept_by) for p in panels))
    col_keys = list(dict.fromkeys(p.schedule for p in panels))
    pw, ph = cols * _CELL_W + 0.2, rows * _CELL_H + _PANEL_TOP + _PANEL_BOTTOM
    fig = plt.figure(figsize=(pw * len(col_keys), ph * len(row_keys)))
    subs = fig.subfigures(len(row_keys), len(col_keys), squeeze=False, facecolor="none")
    for p in panels:
        sub = subs[row_keys.index((p.method, p.kept_by))][col_keys.index(p.schedule)]
        pics = upscale_nearest(x[p.images], upscale) if len(p.picked) else np.zeros((0,))
        _gallery_panel(sub, p, pics, rows, cols)
    fig.suptitle(f"{name} @ sparsity {panels[0].sparsity:g}: {what}\nunder each image: true label / dense "
                 "modal / pruned modal (green: correct, red: wrong)", fontsize=10,
                 y=1.0 + 0.3 / fig.get_figheight())
    return fig


def fig_pie_gallery(panels: list, test_images, cols: int = GALLERY_COLS,
                    upscale: int = GALLERY_UPSCALE) -> plt.Figure:
    """F9: PIE test images per (method, schedule) panel, as picked by :func:`pcl.gallery.
    gallery_panels`; ``test_images`` uint8 (N, 3, 32, 32), upscaled by pixel repetition."""
    return _gallery_figure(panels, test_images, "F9 - PIE gallery", "per panel the PIEs the pruned "
                           "population agrees on most (ties: one per true class in turn)", cols, upscale)


def fig_unique_pies(panels: list, test_images, cols: int = GALLERY_COLS,
                    upscale: int = GALLERY_UPSCALE) -> plt.Figure:
    """F9b: PIEs lost by one method and kept by the other, per (pair, schedule) panel, as picked
    by :func:`pcl.gallery.unique_panels`; captions give the losing method's modal labels."""
    return _gallery_figure(panels, test_images, "F9b - unique PIEs", "lost by one method, kept by the other "
                           "(ranked by the losing population's agreement)", cols, upscale)
