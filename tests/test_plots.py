"""Figures a reader can trust: no text drawn over other text, one colour per method everywhere.

Every figure function is rendered on small tables built here with the columns of the study's
tables (runs, pie_counts, pies, qscores, depths, onset), at one sparsity (as the cpu preset) and at
two (as the smoke preset), stamped as :func:`pcl.plots.save` stamps them; every text the renderer
draws is collected with its window extent, and no two may intersect.
"""
from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from pcl import gallery, methods, plots, schedules, style  # noqa: E402
from pcl.data import CLASSES  # noqa: E402
from pcl.presets import get_preset  # noqa: E402

MAIN = ("gmp_early", "gmp_late", "oneshot")
ONSET = {"gmp@0.39-0.62": 0.3875, "gmp@0.76-1.00": 0.7625}
N = 300  # test images
STAMP = ("preset 'cpu': WRN-10-1, CIFAR-10 train full, test full, 5 seeds (+5 noise floor), "
         "CE 2 ep, SupCon 3+1 ep, bf16 training")


# ------------------------------------------------------------------------------------------------
# synthetic tables with the study tables' columns
def _pops(methods, sparsities):
    """(method, schedule label, sparsity) of every population of a study."""
    out = [(m, s, 0.0) for m in methods for s in ("dense", "floor")]
    out += [(m, s, sp) for m in methods for s in MAIN for sp in sparsities]
    return out + [(m, s, max(sparsities)) for m in methods for s in ONSET]


def runs_table(methods, sparsities, seeds=3, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame([{"method": m, "schedule": s, "sparsity": sp, "seed": k,
                          "test_acc": 0.6 - 0.2 * sp + 0.02 * rng.standard_normal()}
                         for m, s, sp in _pops(methods, sparsities) for k in range(seeds)])


def counts_table(methods, sparsities, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, (m, s, sp) in enumerate(p for p in _pops(methods, sparsities) if p[2] > 0):
        pies = 1000 + 3000 * sp + 200 * i + 50 * rng.standard_normal()
        rows.append({"method": m, "schedule": s, "sparsity": sp, "pies": pies,
                     "ci_low": pies - 150, "ci_high": pies + 150,
                     "floor": 1200 + 300 * methods.index(m), "floor_ci_low": 1000 + 300 * methods.index(m),
                     "floor_ci_high": 1400 + 300 * methods.index(m)})
    return pd.DataFrame(rows)


def pies_table(methods, sparsities, seed=0):
    rng = np.random.default_rng(seed)
    parts = [pd.DataFrame({"method": m, "schedule": s, "sparsity": sp, "image": np.arange(N),
                           "label": np.arange(N) % 10, "pie": rng.random(N) < 0.3 * sp})
             for m, s, sp in _pops(methods, sparsities)]
    return pd.concat(parts, ignore_index=True)


def values_table(pies, column, scale, seed=0):
    rng = np.random.default_rng(seed)
    return pies[["method", "schedule", "sparsity", "image", "label"]].assign(
        **{column: scale * rng.random(len(pies))})


def onset_table(methods):
    return pd.DataFrame([{"method": m, "schedule": s, "begin": b, "sparsity": 0.9,
                          "pies": 2000 + 2000 * b + 300 * i, "test_acc": 0.5 - 0.1 * b}
                         for i, m in enumerate(methods) for s, b in
                         [("gmp_early", 0.0125), *ONSET.items()]])


def history(phases, epochs=3, pruned=True):
    """A stored run history: loss per epoch of each phase, sparsity rising during the first."""
    rows = [{"phase": p, "epoch": e + 1, "loss": (30.0 if i == 0 else 1.5) / (e + 1),
             "sparsity": 0.9 * min(1.0, e / 2) if pruned and i == 0 else (0.9 if pruned else 0.0)}
            for i, p in enumerate(phases) for e in range(epochs)]
    return {"epochs": rows, "test_acc": 0.5, "pruning_events": {}}


def images_table(methods, sparsity, seed=0):
    """images.csv rows enough for the gallery's selection."""
    rng = np.random.default_rng(seed)
    parts = [pd.DataFrame({"method": m, "schedule": s, "sparsity": sparsity, "image": np.arange(N),
                           "label": np.arange(N) % 10, "dense_modal": np.arange(N) % 10,
                           "pruned_modal": (np.arange(N) + 1) % 10, "pruned_share": rng.random(N),
                           "pie": rng.random(N) < 0.3})
             for m in methods for s in MAIN]
    return pd.concat(parts, ignore_index=True)


def overlap_matrix(methods, sparsity=0.9):
    """A matrix like claims.overlap_matrix's: 'method schedule' names, split-half diagonal."""
    names = [f"{m} {s}" for m in methods for s in MAIN]
    v = np.array([[0.8 - 0.05 * i if i == j else 0.3 + 0.02 * (i + j) for j in range(len(names))]
                  for i in range(len(names))])
    return pd.DataFrame(v, index=names, columns=names)


def gmp_configs(sparsity=0.9):
    """One smoke run per pruning schedule and the onset sweep, keyed by population label."""
    p = get_preset("smoke", dataset="synthetic")
    cfgs = [p.run("ce", 0, s, sparsity) for s in MAIN]
    cfgs.append(p.run("ce", 0, "gmp", sparsity, gmp_begin=0.4, gmp_end=0.6))
    return {c.schedule: c for c in cfgs}


def events(cfg, steps=100):
    """Pruning events (step, target, measured) every 5 steps of the window of ``cfg``."""
    w = cfg.gmp_window
    return [(k, 0.0, schedules.get(cfg.pruning).target(cfg, k / steps))
            for k in range(int(w[0] * steps), int(w[1] * steps) + 1, 5)] if w else []


def figures(methods, sparsities):
    """Every figure function of plots on one synthetic study: name -> a callable drawing it."""
    sp = max(sparsities)
    runs, counts, pies = (runs_table(methods, sparsities), counts_table(methods, sparsities),
                          pies_table(methods, sparsities))
    q, d = values_table(pies, "qscore", 1.0), values_table(pies, "depth", 12.0)
    d["depth"] = d.depth.round()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 3, 32, 32), dtype=np.uint8)
    itab = images_table(methods, sp)
    return {
        "F0_training_curves": lambda: plots.fig_training_curves(
            {m: history(["train", "head"]) if m != "ce" else history(["train"], epochs=1)
             for m in methods}),  # one CE epoch, as in the cpu study: its ticks must not collide
        "F0_gmp_schedules": lambda: plots.fig_gmp_schedules(
            gmp_configs(sp), {k: events(c) for k, c in gmp_configs(sp).items()}, 100),
        "F1_accuracy_vs_sparsity": lambda: plots.fig_accuracy(runs),
        "F2_pies_vs_sparsity": lambda: plots.fig_pie_counts(counts),
        "F3_pies_per_class": lambda: plots.fig_pies_per_class(pies, sp),
        "F4_pie_overlap": lambda: plots.fig_overlap(overlap_matrix(methods, sp), sp),
        "F5_qscore_dense_vs_pruned": lambda: plots.fig_qscore(q, pies, sp),
        "F6_depth_dense_vs_pruned": lambda: plots.fig_depth(d, pies, sp),
        "F6b_depth_distributions": lambda: plots.fig_depth_distributions(d, pies, sp),
        "F7_umap": lambda: plots.fig_umap({f"{m} {s}": rng.standard_normal((N, 2))
                                           for m in methods for s in ("dense", "oneshot")},
                                          np.arange(N) % 10),
        "F8_schedule_effect": lambda: plots.fig_schedules(runs, counts, sp, onset_table(methods)),
        "F9_pie_gallery": lambda: plots.fig_pie_gallery(gallery.gallery_panels(itab, sp, MAIN, n=6),
                                                         images),
        "F9b_unique_pies": lambda: plots.fig_unique_pies(gallery.unique_panels(itab, sp, MAIN, n=6),
                                                         images),
    }


# ------------------------------------------------------------------------------------------------
# the overlap check
def drawn_texts(fig: plt.Figure) -> list[tuple[str, object, object]]:
    """(name, window extent, artist) of every non-empty text and every legend box the renderer
    draws (ticks outside the view and invisible artists are not drawn, so not collected); a
    rotated text counts with its axis-aligned extent, which contains it."""
    seen = []
    text_draw, legend_draw = Text.draw, Legend.draw

    def text(self, renderer):
        text_draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            seen.append((repr(self.get_text()), self.get_window_extent(renderer), self))

    def legend(self, renderer):
        legend_draw(self, renderer)
        if self.get_visible():
            seen.append((f"the legend of {[t.get_text() for t in self.get_texts()][:2]}",
                         self.get_window_extent(renderer), self))

    Text.draw, Legend.draw = text, legend
    try:
        fig.canvas.draw()
    finally:
        Text.draw, Legend.draw = text_draw, legend_draw
    return seen


def _inside(a, b) -> bool:
    """Whether one of the two artists is a legend holding the other."""
    return any(isinstance(x, Legend) and (y in x.get_texts() or y is x.get_title())
               for x, y in ((a, b), (b, a)))


def overlapping(texts, tol: float = 1.0) -> list[tuple[str, str]]:
    """Names of the pairs whose extents intersect by more than ``tol`` pixels both ways (a
    legend's own texts do not count against its box)."""
    out = []
    for (a, ba, xa), (b, bb, xb) in itertools.combinations(texts, 2):
        w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
        h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
        if w > tol and h > tol and not _inside(xa, xb):
            out.append((a, b))
    return out


SCALES = {"one sparsity, three methods": (("ce", "supcon", "simclr"), (0.9,)),
          "two sparsities, two methods": (("ce", "supcon"), (0.5, 0.9))}


@pytest.mark.parametrize("scale", SCALES)
def test_no_text_overlaps_in_any_figure(scale):
    problems = []
    for name, draw in figures(*SCALES[scale]).items():
        fig = draw()
        style.stamp(fig, STAMP)
        problems += [f"{name}: {a} overlaps {b}" for a, b in overlapping(drawn_texts(fig))]
        plt.close(fig)
    assert not problems, "\n".join(problems)


def test_the_overlap_check_names_colliding_texts():
    """A deliberately colliding figure: the old stamp position over the x label, a legend over
    the title; and the same texts apart are not flagged."""
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="a line")
    ax.set(xlabel="sparsity", title="a long title that runs to the right edge of the axes")
    fig.text(0.995, 0.002, STAMP, ha="right", va="bottom", fontsize=7)
    fig.legend(loc="upper right")
    bad = overlapping(drawn_texts(fig))
    assert ("'sparsity'", repr(STAMP)) in bad
    assert any("legend" in a + b and "long title" in a + b for a, b in bad)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot([0, 1], [0, 1], label="a line")
    ax.set(xlabel="sparsity", title="a long title that runs to the right edge of the axes")
    fig.legend(loc="outside right center")
    style.stamp(fig, STAMP)
    assert overlapping(drawn_texts(fig)) == []
    plt.close(fig)


def _points(ax) -> dict[float, tuple[str, float, float, float]]:
    """x -> (colour, y, lower end, upper end) of every error-bar point of ``ax``."""
    out = {}
    for c in ax.containers:
        line, _, (bars, *_) = c.lines
        for x, y, seg in zip(line.get_xdata(), line.get_ydata(), bars.get_segments(), strict=True):
            out[round(float(x), 6)] = (matplotlib.colors.to_hex(line.get_color()), float(y),
                                       float(seg[:, 1].min()), float(seg[:, 1].max()))
    return out


def test_one_sparsity_is_a_point_and_interval_per_method_in_one_colour_everywhere():
    ms = ("ce", "supcon", "simclr")
    runs, counts = runs_table(ms, (0.9,)), counts_table(ms, (0.9,))
    colours = [matplotlib.colors.to_hex(style.method_colors()[m]) for m in ms]
    assert len(set(colours)) == 3
    f2, f8 = plots.fig_pie_counts(counts), plots.fig_schedules(runs, counts, 0.9, onset_table(ms))
    f1 = plots.fig_accuracy(runs)
    for ax in (f1.axes[0], f2.axes[0], f8.axes[0], f8.axes[1]):
        assert all(len(line.get_xdata()) <= 1 or line.get_linestyle() == "None"
                   for line in ax.lines), "a line across a single sparsity"
        pts = _points(ax)
        # categories: reference, gmp_early, gmp_late, oneshot; methods side by side in registry order
        assert len(pts) == 4 * 3
        for k in range(4):
            at = sorted(x for x in pts if abs(x - k) < 0.5)
            assert [pts[x][0] for x in at] == colours
    # values and intervals are the table's: F2's (supcon, gmp_late) and CE's noise floor
    pts = _points(f2.axes[0])
    row = counts[(counts.method == "supcon") & (counts.schedule == "gmp_late")].iloc[0]
    assert pts[round(2.0, 6)][1:] == pytest.approx((row.pies, row.ci_low, row.ci_high))
    ce = counts[counts.method == "ce"].iloc[0]
    assert pts[round(0 - 0.7 / 3, 6)][1:] == pytest.approx((ce.floor, ce.floor_ci_low, ce.floor_ci_high))
    # F1: the mean and t-interval of the seeds, by hand
    acc = runs[(runs.method == "ce") & (runs.schedule == "oneshot")].test_acc.to_numpy()
    half = 4.302652729911275 * acc.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert _points(f1.axes[0])[round(3 - 0.7 / 3, 6)][1:] == pytest.approx(
        (acc.mean(), acc.mean() - half, acc.mean() + half))
    assert "@ sparsity 0.9" in f8._suptitle.get_text() and "gmp_late" in f8._suptitle.get_text()
    for f in (f1, f2, f8):
        plt.close(f)


def test_several_sparsities_are_lines_from_the_reference():
    counts = counts_table(("ce", "supcon"), (0.5, 0.9))
    fig = plots.fig_pie_counts(counts)
    lines = [c.lines[0] for c in fig.axes[0].containers]
    assert len(lines) == 2 * 3 and all(list(line.get_xdata()) == [0, 0.5, 0.9] for line in lines)
    assert len({line.get_linestyle() for line in lines}) == 3  # one line style per schedule
    plt.close(fig)


def test_style_follows_the_registries():
    """A method or schedule registered later, without a colour, gets its own; a registry colour
    is kept; the others keep theirs."""
    from dataclasses import replace

    before = style.method_colors()
    methods.register(replace(methods.get("ce"), name="tmp_a", label="TmpA", color=None))
    methods.register(replace(methods.get("ce"), name="tmp_b", label="TmpB", color="black"))
    schedules.register(replace(schedules.get("gmp_early"), name="gmp_mid", fixed=(0.3, 0.5)))
    try:
        after = style.method_colors()
        assert {m: after[m] for m in before} == before
        assert after["tmp_a"] not in before.values() and after["tmp_b"] == "black"
        st = style.schedule_styles()
        assert st["gmp_mid"] not in [st[s] for s in st if s != "gmp_mid"]
        assert "gmp_mid" in style.schedule_order()[:len(schedules.main_schedules())]
        assert style.method_label("tmp_a") == "TmpA" and style.method_label("nope") == "nope"
    finally:
        methods.unregister("tmp_a")
        methods.unregister("tmp_b")
        schedules.unregister("gmp_mid")


def test_f3_full_class_names_in_the_methods_colours():
    pies = pies_table(("ce", "supcon"), (0.9,))
    fig = plots.fig_pies_per_class(pies, 0.9)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(CLASSES)
    colours = style.method_colors()
    bars = {p.get_label(): matplotlib.colors.to_hex(p.patches[0].get_facecolor())
            for p in fig.axes[0].containers}
    assert bars["SupCon only"] == matplotlib.colors.to_hex(colours["supcon"])
    assert bars["CE only"] == matplotlib.colors.to_hex(colours["ce"])
    plt.close(fig)


@pytest.mark.parametrize("statistic", plots.OVERLAP_STATISTICS)
def test_f4_draws_the_given_matrix_and_names_its_statistic(statistic):
    m = overlap_matrix(("ce", "supcon"))
    fig = plots.fig_overlap(m, 0.9, statistic)
    ax = fig.axes[0]
    assert np.array_equal(ax.images[0].get_array(), m.to_numpy())
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert [cells[i, i] for i in range(len(m))] == [f"{m.iat[i, i]:.2f}" for i in range(len(m))]
    assert statistic in fig._suptitle.get_text() and "split-half" in fig._suptitle.get_text()
    assert fig.axes[1].get_ylabel() == statistic  # the colour bar
    plt.close(fig)
    with pytest.raises(ValueError, match="Dice"):
        plots.fig_overlap(m, 0.9, "Dice")
    with pytest.raises(ValueError, match="same index and columns"):
        plots.fig_overlap(m.iloc[:, ::-1], 0.9)


def test_f0_ramps_are_the_schedules_targets_and_phases_get_their_own_axes():
    cfgs = gmp_configs(0.9)
    fig = plots.fig_gmp_schedules(cfgs)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    t = lines["gmp_early: target"].get_xdata()
    b, e = cfgs["gmp_early"].gmp_window
    u = np.clip((t - b) / (e - b), 0, 1)
    assert lines["gmp_early: target"].get_ydata() == pytest.approx(0.9 * (1 - (1 - u) ** 3))
    assert set(lines["oneshot: target"].get_ydata()) == {0.9}
    plt.close(fig)
    hist = {"ce": history(["train"], pruned=False), "supcon": history(["train", "head"])}
    fig = plots.fig_training_curves(hist)
    losses = [ax.lines[0].get_ydata().tolist() for ax in fig.axes if ax.get_ylabel() == "training loss"]
    assert losses == [[30.0, 15.0, 10.0], [30.0, 15.0, 10.0], [1.5, 0.75, 0.5]]
    assert sum(ax.get_ylabel() == "sparsity" for ax in fig.axes) == 2  # the pruned run's phases
    plt.close(fig)
