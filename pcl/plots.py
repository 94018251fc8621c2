"""The study's figures (F1-F8). Tidy tables in, a matplotlib Figure out; :func:`save` writes
PNG (for reading) and PDF (for papers) and stamps every figure with the scale it was made at."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import methods, metrics, schedules
from .data import CLASSES

#: The schedules every main figure compares, and their colours: read from :mod:`pcl.schedules`.
MAIN_SCHEDULES = schedules.main_schedules()
PALETTE = schedules.palette()
BOOT_SEED = 0
#: Line style per method, in registry order (the paper's two first: CE dashed, SupCon solid).
_LINESTYLES = ("--", "-", ":", "-.")
_STYLE_NAMES = {"--": "dashed", "-": "solid", ":": "dotted", "-.": "dash-dot"}


def method_order(present) -> list[str]:
    """The methods in ``present`` in registry order (unregistered names last, sorted)."""
    present = set(present)
    known = [m for m in methods.names() if m in present]
    return known + sorted(present - set(known))


def method_style(m: str) -> str:
    """A method's line style (registry order; the same method always gets the same style)."""
    names = list(methods.names())
    return _LINESTYLES[names.index(m) % len(_LINESTYLES)] if m in names else ":"


def method_label(m: str) -> str:
    """A method's display label ('CE', 'SupCon', 'SimCLR'; the name itself when unregistered)."""
    return methods.labels().get(m, m)


def save(fig: plt.Figure, name: str, outdir: str | Path, label: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf under ``outdir``, with ``label`` as a footer."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    fig.text(0.995, 0.002, label, ha="right", va="bottom", fontsize=7, color="0.35")
    paths = []
    for ext in ("png", "pdf"):
        p = outdir / f"{name}.{ext}"
        # no creation date in the PDF: re-running a notebook leaves an unchanged figure unchanged
        fig.savefig(p, dpi=130 if ext == "png" else None, bbox_inches="tight",
                    metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(p)
    return paths


def _with_dense(runs: pd.DataFrame) -> pd.DataFrame:
    """Repeat the dense rows as sparsity 0 of every main schedule (curves start at the dense model)."""
    dense = runs[runs.schedule == "dense"]
    parts = [runs[runs.schedule.isin(MAIN_SCHEDULES)]]
    parts += [dense.assign(schedule=s) for s in MAIN_SCHEDULES]
    return pd.concat(parts, ignore_index=True)


def fig_accuracy(runs: pd.DataFrame) -> plt.Figure:
    """F1: test accuracy vs sparsity, method x schedule, mean and 95% CI over seeds."""
    d = _with_dense(runs)
    g = sns.relplot(data=d, x="sparsity", y="test_acc", hue="schedule", col="method", kind="line",
                    marker="o", errorbar=("ci", 95), seed=BOOT_SEED, palette=PALETTE,
                    height=3.2, aspect=1.2, facet_kws={"sharey": True})
    g.set_axis_labels("sparsity (fraction of prunable weights)", "test accuracy")
    g.figure.suptitle("F1 - accuracy vs sparsity (mean, 95% CI over seeds)", y=1.03)
    return g.figure


def fig_pie_counts(counts: pd.DataFrame) -> plt.Figure:
    """F2: number of PIEs vs sparsity per method and schedule, with each method's noise floor.

    ``counts`` is :func:`pcl.claims.pie_counts`'s table; ``ci_low``/``ci_high`` become error bars
    and ``floor``/``floor_ci_low``/``floor_ci_high`` (the PIE count between two independent dense
    populations of the method) a horizontal line and band per method, when present.
    """
    d = counts[counts.schedule.isin(MAIN_SCHEDULES)].sort_values("sparsity")
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    order = method_order(d.method.unique())
    for (m, sch), g in d.groupby(["method", "schedule"]):
        ls = method_style(m)
        ax.plot(g.sparsity, g.pies, ls, marker="o", color=PALETTE[sch], label=f"{m} {sch}")
        if {"ci_low", "ci_high"} <= set(g) and np.isfinite(g[["ci_low", "ci_high"]]).all(None):
            ax.errorbar(g.sparsity, g.pies, yerr=np.abs(np.vstack([g.pies - g.ci_low,
                                                                 g.ci_high - g.pies])),
                        fmt="none", ecolor=PALETTE[sch], capsize=3, lw=1)
    if "floor" in d:
        shades = ("0.55", "0.35", "0.75", "0.15")
        for i, m in enumerate(order):
            f = d[(d.method == m) & np.isfinite(d.floor)]
            if f.empty:
                continue
            r = f.iloc[0]
            c = shades[i % len(shades)]
            ax.axhline(r.floor, color=c, ls=method_style(m), lw=1,
                       label=f"{method_label(m)} noise floor")
            if {"floor_ci_low", "floor_ci_high"} <= set(f) and np.isfinite(
                    [r.floor_ci_low, r.floor_ci_high]).all():
                ax.axhspan(r.floor_ci_low, r.floor_ci_high, color=c, alpha=0.15, lw=0)
    ax.set(xlabel="sparsity", ylabel="number of PIEs (test images)",
           title="F2 - PIEs vs sparsity (" + ", ".join(
               f"{_STYLE_NAMES[method_style(m)]}: {method_label(m)}" for m in order)
           + "; grey: noise floor, 95% CI)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=2)
    return fig


def fig_pies_per_class(pies: pd.DataFrame, sparsity: float,
                       pair: tuple[str, str] | None = None) -> plt.Figure:
    """F3: PIEs per true class at ``sparsity``, split into common to two methods, and unique.

    ``pair`` = (a, b); default: the second and the first method of the table in registry order
    (SupCon and CE, as in the paper)."""
    if pair is None:
        ms = method_order(pies.method.unique()) if len(pies) else []
        pair = (ms[1], ms[0]) if len(ms) > 1 else ("supcon", "ce")
    ma, mb = pair
    rows = []
    for sch in MAIN_SCHEDULES:
        a = pies[(pies.method == ma) & (pies.schedule == sch) & (pies.sparsity == sparsity)]
        b = pies[(pies.method == mb) & (pies.schedule == sch) & (pies.sparsity == sparsity)]
        if a.empty or b.empty:
            continue
        a, b = a.sort_values("image"), b.sort_values("image")
        cu = metrics.common_unique(a.pie.to_numpy(), b.pie.to_numpy(), a.label.to_numpy())
        rows.append(cu.assign(schedule=sch))
    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(4.2 * max(1, len(rows)), 3.6),
                             sharey=True, squeeze=False)
    names = {"common": "common", "only_a": f"{method_label(ma)} only", "only_b": f"{method_label(mb)} only"}
    colors = {"common": "0.45", "only_a": "tab:purple", "only_b": "tab:orange"}
    for ax, cu in zip(axes[0], rows):
        wide = cu.pivot(index="class", columns="kind", values="count").reindex(columns=list(names))
        bottom = np.zeros(len(wide))
        for kind in names:
            ax.bar(range(len(wide)), wide[kind], bottom=bottom, color=colors[kind], label=names[kind])
            bottom += wide[kind].to_numpy()
        ax.set_xticks(range(len(wide)), [CLASSES[i][:5] for i in wide.index], rotation=60, fontsize=7)
        ax.set_title(f"{cu.schedule.iloc[0]} @ {sparsity}")
    axes[0][0].set_ylabel("PIEs (by true label)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"F3 - PIEs per class: common to {method_label(ma)} and {method_label(mb)} vs unique",
                 y=1.02)
    return fig


def fig_jaccard(pies: pd.DataFrame, sparsity: float) -> plt.Figure:
    """F4: Jaccard overlap of the PIE sets of every pair of configurations at ``sparsity``."""
    sel = pies[(pies.sparsity == sparsity) & pies.schedule.isin(MAIN_SCHEDULES)]
    masks = {f"{m} {s}": g.sort_values("image").pie.to_numpy()
             for (m, s), g in sel.groupby(["method", "schedule"])}
    jm = metrics.jaccard_matrix(masks)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    sns.heatmap(jm, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax, square=True)
    ax.set_title(f"F4 - Jaccard overlap of PIE sets @ sparsity {sparsity}")
    return fig


def _paired(table: pd.DataFrame, pies: pd.DataFrame, value: str, sparsity: float) -> list:
    out = []
    for m in method_order(table.method.unique()):
        dense = table[(table.method == m) & (table.schedule == "dense")].sort_values("image")
        for sch in MAIN_SCHEDULES:
            pr = table[(table.method == m) & (table.schedule == sch) &
                       (table.sparsity == sparsity)].sort_values("image")
            pie = pies[(pies.method == m) & (pies.schedule == sch) &
                       (pies.sparsity == sparsity)].sort_values("image")
            if dense.empty or pr.empty or pie.empty:
                continue
            out.append((m, sch, dense[value].to_numpy(), pr[value].to_numpy(), pie.pie.to_numpy()))
    return out


def _scatter_grid(pairs: list, title: str, what: str, jitter: float = 0.0) -> plt.Figure:
    n = max(1, len(pairs))
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.3 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, (m, sch, x, y, pie) in zip(axes.flat, pairs):
        jx = rng.uniform(-jitter, jitter, len(x)) if jitter else 0
        jy = rng.uniform(-jitter, jitter, len(y)) if jitter else 0
        ax.scatter(x[~pie] + (jx[~pie] if jitter else 0), y[~pie] + (jy[~pie] if jitter else 0),
                   s=2, alpha=0.25, color="0.5", label="other images", rasterized=True)
        ax.scatter(x[pie] + (jx[pie] if jitter else 0), y[pie] + (jy[pie] if jitter else 0),
                   s=5, alpha=0.8, color="tab:red", label=f"PIEs ({pie.sum()})", rasterized=True)
        finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
        if finite.size:
            lo, hi = finite.min(), finite.max()
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(title=f"{m} {sch}", xlabel=f"dense {what}", ylabel=f"pruned {what}")
        ax.legend(fontsize=6, markerscale=2)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.suptitle(title, y=1.01)
    fig.tight_layout()
    return fig


def fig_qscore(qscores: pd.DataFrame, pies: pd.DataFrame, sparsity: float) -> plt.Figure:
    """F5: Q-Score per image, dense vs pruned population mean, PIEs highlighted, y = x line."""
    return _scatter_grid(_paired(qscores, pies, "qscore", sparsity),
                         f"F5 - Q-Score per test image, dense vs pruned @ {sparsity}", "Q-Score")


def fig_depth(depths: pd.DataFrame, pies: pd.DataFrame, sparsity: float) -> plt.Figure:
    """F6: prediction depth, dense vs pruned per image (jittered), and distributions."""
    pairs = _paired(depths, pies, "depth", sparsity)
    fig = _scatter_grid(pairs, f"F6 - prediction depth per test image, dense vs pruned @ {sparsity}",
                        "depth", jitter=0.25)
    return fig


def fig_depth_distributions(depths: pd.DataFrame, pies: pd.DataFrame, sparsity: float) -> plt.Figure:
    """F6b: distribution of prediction depth, PIEs vs other images, per configuration."""
    d = depths.merge(pies[["method", "schedule", "sparsity", "image", "pie"]],
                     on=["method", "schedule", "sparsity", "image"], how="inner")
    d = d[d.sparsity == sparsity]
    g = sns.displot(data=d, x="depth", hue="pie", col="schedule", row="method", kind="hist",
                    stat="density", common_norm=False, element="step", binwidth=1,
                    height=2.4, aspect=1.2, facet_kws={"sharey": False})
    g.figure.suptitle(f"F6b - prediction depth distribution, PIEs vs others @ {sparsity}", y=1.03)
    return g.figure


def fig_umap(embeddings: dict[str, np.ndarray], labels: np.ndarray) -> plt.Figure:
    """F7: 2-D UMAP of one model's test features per panel, coloured by class."""
    n = len(embeddings)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (title, emb) in zip(axes[0], embeddings.items()):
        ax.scatter(emb[:, 0], emb[:, 1], c=cmap(labels % 10), s=1.5, alpha=0.6, rasterized=True)
        ax.set(title=title, xticks=[], yticks=[])
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i), label=c)
               for i, c in enumerate(CLASSES)]
    fig.legend(handles=handles, loc="lower center", ncol=10, fontsize=6, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("F7 - UMAP of test features (one model each)", y=1.02)
    return fig


def fig_schedules(runs: pd.DataFrame, counts: pd.DataFrame, sparsity: float,
                  onset: pd.DataFrame | None = None) -> plt.Figure:
    """F8: schedule effect at ``sparsity``: PIEs and accuracy per schedule, and the onset sweep.

    ``onset``: rows (method, begin, pies, test_acc) of the pruning-onset sweep.
    """
    ncols = 3 if onset is not None and len(onset) else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.0 * ncols, 3.5))
    c = counts[(counts.sparsity == sparsity) & counts.schedule.isin(MAIN_SCHEDULES)]
    order = method_order(c.method.unique())
    width = 0.8 / max(1, len(order))
    for j, m in enumerate(order):
        g = c[c.method == m].set_index("schedule").reindex(list(MAIN_SCHEDULES))
        x = np.arange(len(MAIN_SCHEDULES)) + (j - (len(order) - 1) / 2) * width
        yerr = np.abs(np.vstack([g.pies - g.ci_low, g.ci_high - g.pies])) if "ci_low" in g else None
        axes[0].bar(x, g.pies, width=width, yerr=yerr, capsize=3, label=m, color=f"C{j}")
        if "floor" in g and np.isfinite(g.floor).any():  # the method's noise floor
            axes[0].axhline(g.floor[np.isfinite(g.floor)].iloc[0], color=f"C{j}", ls=":", lw=1.2)
    axes[0].set_xticks(range(len(MAIN_SCHEDULES)), list(MAIN_SCHEDULES))
    axes[0].set(title=f"PIEs @ {sparsity} (95% CI over seeds;\ndotted: noise floor)",
                ylabel="number of PIEs")
    axes[0].legend(fontsize=7)
    r = runs[(runs.sparsity == sparsity) & runs.schedule.isin(MAIN_SCHEDULES)]
    sns.barplot(data=r, x="schedule", y="test_acc", hue="method", ax=axes[1],
                order=list(MAIN_SCHEDULES), errorbar=("ci", 95), seed=BOOT_SEED)
    axes[1].set(title=f"accuracy @ {sparsity}", ylabel="test accuracy")
    if ncols == 3:
        for m, g in onset.groupby("method"):
            g = g.sort_values("begin")
            axes[2].plot(g.begin, g.pies, marker="o", label=m)
        axes[2].set(title="pruning onset sweep", xlabel="GMP begin (fraction of training)",
                    ylabel="number of PIEs")
        axes[2].legend(fontsize=7)
    fig.suptitle("F8 - schedule effect: early vs late GMP vs one-shot", y=1.02)
    fig.tight_layout()
    return fig


def fig_training_curves(histories: dict[str, dict]) -> plt.Figure:
    """Training loss per epoch of a few runs (``histories``: label -> stored history)."""
    fig, axes = plt.subplots(1, len(histories), figsize=(4 * len(histories), 3), squeeze=False)
    for ax, (label, h) in zip(axes[0], histories.items()):
        e = pd.DataFrame(h["epochs"])
        for phase, g in e.groupby("phase", sort=False):
            ax.plot(range(len(g)), g.loss.to_numpy(), marker=".", label=phase)
        ax.set(title=f"{label} (test acc {h['test_acc']:.3f})", xlabel="epoch of phase",
               ylabel="training loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_gmp_schedules(windows: dict[str, tuple[float, float]], final: float,
                      events: dict[str, list] | None = None, total_steps: int | None = None
                      ) -> plt.Figure:
    """The GMP target sparsity over training for each (begin, end) window, with the measured
    sparsity after every pruning event of a real run when ``events`` (step, target, measured)."""
    from .pruning import gmp_sparsity

    fig, ax = plt.subplots(figsize=(6, 3.4))
    t = np.linspace(0, 1, 400)
    for name, (b, e) in windows.items():
        ax.plot(t, [gmp_sparsity(x, b, e, final) for x in t], label=f"{name} target",
                color=PALETTE.get(name))
    for name, ev in (events or {}).items():
        if ev and total_steps:
            st = np.array([x[0] for x in ev]) / total_steps
            ax.plot(st, [x[2] for x in ev], "x", ms=4, color=PALETTE.get(name),
                    label=f"{name} measured")
    ax.set(xlabel="fraction of training steps", ylabel="sparsity", title="GMP schedules")
    ax.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------------
# F9: the PIE gallery (selection by pcl.gallery; these functions only draw)
GALLERY_COLS = 6  # images per row of a panel
GALLERY_UPSCALE = 4  # every 32x32 pixel becomes a 4x4 block (nearest neighbour)


def _class_name(i: int) -> str:
    return CLASSES[i] if 0 <= i < len(CLASSES) else str(i)


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
    for ax, pic, r in zip(axes.flat, pics, panel.picked.itertuples(index=False)):
        ax.imshow(pic, interpolation="nearest")
        lines = [(f"true {_class_name(r.label)}", "0.1"),
                 (f"dense {_class_name(r.dense_modal)}",
                  "tab:green" if r.dense_modal == r.label else "tab:red"),
                 (f"pruned {_class_name(r.pruned_modal)}",
                  "tab:green" if r.pruned_modal == r.label else "tab:red")]
        for j, (text, color) in enumerate(lines):
            ax.annotate(text, xy=(0.5, 0), xycoords="axes fraction", xytext=(0, -1.5 - 6.5 * j),
                        textcoords="offset points", ha="center", va="top", fontsize=5.5,
                        color=color)


def _gallery_figure(panels: list, test_images, title: str, cols: int, upscale: int) -> plt.Figure:
    """Panels on a grid: one row per (method, kept_by), one column per schedule."""
    from .gallery import upscale_nearest

    x = np.asarray(test_images)
    if not panels:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no pruned configuration at this sparsity", ha="center", va="center")
        fig.suptitle(title, fontsize=10)
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
    fig = plt.figure(figsize=(pw * len(col_keys), ph * len(row_keys) + 0.25))
    # an empty strip at the bottom keeps the scale stamp of plots.save off the last captions
    subs = fig.subfigures(len(row_keys) + 1, len(col_keys), squeeze=False,
                          height_ratios=[ph] * len(row_keys) + [0.25])
    for row in subs:
        for s in row:
            s.set_facecolor("none")
    for p in panels:
        sub = subs[row_keys.index((p.method, p.kept_by))][col_keys.index(p.schedule)]
        pics = upscale_nearest(x[p.images], upscale) if len(p.picked) else np.zeros((0,))
        _gallery_panel(sub, p, pics, rows, cols)
    fig.suptitle(f"{title}\nunder each image: true label / dense modal / pruned modal "
                 "(green: correct, red: wrong)", fontsize=10, y=1.0 + 0.3 / fig.get_figheight())
    return fig


def fig_pie_gallery(panels: list, test_images, cols: int = GALLERY_COLS,
                    upscale: int = GALLERY_UPSCALE) -> plt.Figure:
    """F9: PIE test images per (method, schedule) panel, as picked by
    :func:`pcl.gallery.gallery_panels`; ``test_images`` uint8 (N, 3, 32, 32), shown at native
    resolution upscaled by pixel repetition."""
    s = f"{panels[0].sparsity:g}" if panels else "?"
    return _gallery_figure(panels, test_images,
                           f"F9 - PIE gallery @ sparsity {s}: per panel the PIEs the pruned "
                           "population agrees on most (ties: one per true class in turn)", cols, upscale)


def fig_unique_pies(panels: list, test_images, cols: int = GALLERY_COLS,
                    upscale: int = GALLERY_UPSCALE) -> plt.Figure:
    """F9b: PIEs lost by one method and kept by the other, per (pair, schedule) panel, as picked
    by :func:`pcl.gallery.unique_panels`; captions give the losing method's modal labels."""
    s = f"{panels[0].sparsity:g}" if panels else "?"
    return _gallery_figure(panels, test_images,
                           f"F9b - unique PIEs @ sparsity {s}: lost by one method, kept by the "
                           "other (ranked by the losing population's agreement)", cols, upscale)
