"""The per-image table (images.csv) and the PIE gallery's selection rules (F9, F9b)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pcl import evaluate, gallery, plots  # noqa: E402

NAN = np.nan


# ------------------------------------------------------------------------------------------------
# images_table on a constructed case: every modal label, share, tie and PIE flag worked by hand
LABELS = np.array([0, 1, 2, 0])
DENSE = np.array([[0, 1, 2, 1],
                  [0, 1, 1, 2],
                  [1, 1, 2, 0]])
# image 0: 0,0,1 -> 0 (2/3)   1: 1,1,1 -> 1 (3/3)   2: 2,1,2 -> 2 (2/3)   3: 1,2,0 -> tie -> 0 (1/3)
PRUNED = np.array([[0, 2, 1, 2],
                   [1, 2, 2, 2]])
# image 0: 0,1 tie -> 0 (1/2)   1: 2,2 -> 2 (1)   2: 1,2 tie -> 1 (1/2)   3: 2,2 -> 2 (1)
FLOOR = np.array([[0, 1, 2, 0],
                  [0, 1, 2, 0],
                  [2, 0, 2, 1]])
# image 0: 0,0,2 -> 0 (2/3)   1: 1,1,0 -> 1 (2/3)   2: 2,2,2 -> 2 (1)   3: 0,0,1 -> 0 (2/3)

# the rule applied to one configuration (what a panel shows, before its cap)
def select_pies(images, method, schedule, sparsity, n=24):
    gallery._check(images, n)
    rows = gallery.config_rows(images, method, schedule, sparsity)
    return rows["image"].to_numpy()[gallery.rank(rows, rows["pie"].to_numpy(bool))[:n]]


def select_unique(images, lost_by, kept_by, schedule, sparsity, n=24):
    gallery._check(images, n)
    rows, mask = gallery.unique_mask(images, lost_by, kept_by, schedule, sparsity)
    return rows["image"].to_numpy()[gallery.rank(rows, mask)[:n]]


def _preds() -> dict:
    return {("a", "dense", 0.0): DENSE, ("a", "gmp_early", 0.9): PRUNED,
            ("a", "floor", 0.0): FLOOR,
            ("b", "oneshot", 0.9): PRUNED}  # no dense population of 'b': no rows


def _qscores() -> pd.DataFrame:
    rows = []
    for key, vals in {("a", "dense", 0.0): [0.1, 0.2, 0.3, 0.4],
                      ("a", "gmp_early", 0.9): [1.0, 2.0, 3.0, 4.0],
                      ("a", "floor", 0.0): [5.0, 6.0, 7.0, 8.0]}.items():
        for i, v in enumerate(vals):
            rows.append({"method": key[0], "schedule": key[1], "sparsity": key[2], "image": i,
                         "qscore": v})
    return pd.DataFrame(rows)


def _depths() -> pd.DataFrame:
    """Depth of dense and gmp_early only (as depth_table: dense + headline sparsity), image 3
    of gmp_early missing."""
    rows = [{"method": "a", "schedule": "dense", "sparsity": 0.0, "image": i, "depth": d}
            for i, d in enumerate([1.0, 1.5, 2.0, 2.5])]
    rows += [{"method": "a", "schedule": "gmp_early", "sparsity": 0.9, "image": i, "depth": d}
             for i, d in enumerate([3.0, 3.5, 4.0])]
    return pd.DataFrame(rows)


def test_images_table_constructed_case():
    t = evaluate.images_table(_preds(), LABELS, 3, _qscores(), _depths())
    assert list(t.columns) == list(evaluate.IMAGE_COLUMNS)
    assert len(t) == 8 and set(t.method) == {"a"}
    g = t[t.schedule == "gmp_early"].reset_index(drop=True)
    assert (g.sparsity == 0.9).all() and g.image.tolist() == [0, 1, 2, 3]
    assert g.label.tolist() == [0, 1, 2, 0]
    assert g.dense_modal.tolist() == [0, 1, 2, 0]
    assert g.pruned_modal.tolist() == [0, 2, 1, 2]
    np.testing.assert_allclose(g.dense_share, [2 / 3, 1, 2 / 3, 1 / 3])
    np.testing.assert_allclose(g.pruned_share, [0.5, 1, 0.5, 1])
    assert g.dense_ties.tolist() == [False, False, False, True]
    assert g.pruned_ties.tolist() == [True, False, True, False]
    assert g.pie.tolist() == [False, True, True, True]
    np.testing.assert_allclose(g.qscore_dense, [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(g.qscore_pruned, [1, 2, 3, 4])
    np.testing.assert_allclose(g.depth_dense, [1, 1.5, 2, 2.5])
    np.testing.assert_allclose(g.depth_pruned, [3, 3.5, 4, NAN])
    assert (g.models == 2).all() and (g.dense_models == 3).all()

    f = t[t.schedule == "floor"].reset_index(drop=True)
    assert (f.sparsity == 0.0).all()
    assert f.pruned_modal.tolist() == [0, 1, 2, 0]
    np.testing.assert_allclose(f.pruned_share, [2 / 3, 2 / 3, 1, 2 / 3])
    assert f.pruned_ties.tolist() == [False] * 4
    assert f.pie.tolist() == [False] * 4  # dense image 3 is a tie broken to 0, as the floor's 0
    np.testing.assert_allclose(f.qscore_pruned, [5, 6, 7, 8])
    np.testing.assert_allclose(f.depth_dense, [1, 1.5, 2, 2.5])
    assert f.depth_pruned.isna().all()  # depth is not computed on the floor


def test_images_table_brute_force_and_pie_mask():
    """Random populations: every row against a per-image Counter, and the PIE flag against
    metrics.pie_mask (the function the PIE counts use)."""
    from collections import Counter

    from pcl import metrics

    rng = np.random.default_rng(3)
    k, n = 4, 60
    preds = {("m", "dense", 0.0): rng.integers(0, k, (5, n)),
             ("m", "oneshot", 0.5): rng.integers(0, k, (3, n)),
             ("m", "floor", 0.0): rng.integers(0, k, (5, n))}
    labels = rng.integers(0, k, n)
    t = evaluate.images_table(preds, labels, k)
    assert t.qscore_dense.isna().all() and t.depth_pruned.isna().all()
    for key in [("m", "oneshot", 0.5), ("m", "floor", 0.0)]:
        rows = t[(t.schedule == key[1])].sort_values("image")
        assert np.array_equal(rows.pie.to_numpy(),
                              metrics.pie_mask(preds[("m", "dense", 0.0)], preds[key], k))
        for col, p in (("pruned", preds[key]), ("dense", preds[("m", "dense", 0.0)])):
            for i, r in zip(range(n), rows.itertuples(index=False), strict=True):
                c = Counter(p[:, i].tolist())
                top = max(c.values())
                winners = sorted(v for v, m in c.items() if m == top)
                assert getattr(r, f"{col}_modal") == winners[0]
                assert getattr(r, f"{col}_share") == pytest.approx(top / p.shape[0])
                assert getattr(r, f"{col}_ties") == (len(winners) > 1)


def test_images_table_bad_input():
    with pytest.raises(ValueError, match="must be"):
        evaluate.images_table({("a", "dense", 0.0): DENSE[:, :3]}, LABELS, 3)
    with pytest.raises(ValueError, match="1-D"):
        evaluate.images_table(_preds(), LABELS[None], 3)
    empty = evaluate.images_table({("a", "dense", 0.0): DENSE}, LABELS, 3)
    assert empty.empty and list(empty.columns) == list(evaluate.IMAGE_COLUMNS)


# ------------------------------------------------------------------------------------------------
# selection rules
def _table(method: str, schedule: str, pie, share, sparsity: float = 0.9) -> pd.DataFrame:
    n = len(pie)
    return pd.DataFrame({"method": method, "schedule": schedule, "sparsity": sparsity,
                         "image": np.arange(n), "label": np.arange(n) % 10,
                         "dense_modal": np.arange(n) % 10, "pruned_modal": (np.arange(n) + 1) % 10,
                         "pruned_share": share, "pie": pie})


def test_select_pies_hand_worked():
    t = _table("x", "gmp_early", [True, False, True, True, True, True],
               [0.5, 1.0, 1.0, 0.5, 1.0, 0.75])
    # PIEs 0 (.5), 2 (1), 3 (.5), 4 (1), 5 (.75), all of different classes: by share desc, then
    # class -> 2, 4, 5, 0, 3
    assert select_pies(t, "x", "gmp_early", 0.9, n=3).tolist() == [2, 4, 5]
    assert select_pies(t, "x", "gmp_early", 0.9, n=24).tolist() == [2, 4, 5, 0, 3]


def test_select_pies_round_robin_over_classes():
    """Equal shares: one image per class in turn, not the first class's images in index order."""
    t = _table("x", "oneshot", [True] * 6, [1.0] * 6)
    t["label"] = [0, 0, 0, 1, 1, 2]  # a class-sorted split
    # turn 0: 0 (class 0), 3 (class 1), 5 (class 2); turn 1: 1, 4; turn 2: 2
    assert select_pies(t, "x", "oneshot", 0.9).tolist() == [0, 3, 5, 1, 4, 2]
    t["pruned_share"] = [1.0, 0.5, 0.5, 0.5, 1.0, 0.5]  # share first: 0, 4; then 0.5 in turns
    assert select_pies(t, "x", "oneshot", 0.9).tolist() == [0, 4, 1, 3, 5, 2]


def test_select_pies_brute_force_and_row_order_invariant():
    rng = np.random.default_rng(0)
    n = 200
    pie = rng.random(n) < 0.3
    share = rng.choice([0.25, 0.5, 0.75, 1.0], n)
    t = _table("x", "oneshot", pie, share)
    labels = np.arange(n) % 10

    def turn(i):  # how many PIEs of the same share and class have a smaller index
        return sum(1 for j in np.flatnonzero(pie) if share[j] == share[i] and labels[j] == labels[i]
                   and j < i)
    expect = sorted(np.flatnonzero(pie), key=lambda i: (-share[i], turn(i), labels[i], i))[:24]
    assert select_pies(t, "x", "oneshot", 0.9).tolist() == expect
    shuffled = t.sample(frac=1.0, random_state=1)
    assert select_pies(shuffled, "x", "oneshot", 0.9).tolist() == expect


def test_unique_both_directions_any_method_names():
    rng = np.random.default_rng(1)
    n = 80
    pies = {m: rng.random(n) < 0.4 for m in ("p", "q", "r")}
    share = {m: rng.choice([0.5, 1.0], n) for m in pies}
    t = pd.concat([_table(m, "gmp_late", pies[m], share[m]) for m in pies], ignore_index=True)
    panels = gallery.unique_panels(t, 0.9, ["gmp_late"], n=500)
    assert [(p.method, p.kept_by) for p in panels] == [
        ("p", "q"), ("p", "r"), ("q", "p"), ("q", "r"), ("r", "p"), ("r", "q")]
    for p in panels:
        want = np.flatnonzero(pies[p.method] & ~pies[p.kept_by])
        assert p.total == len(want)
        assert sorted(p.images.tolist()) == want.tolist()
        sh, lab = share[p.method], np.arange(n) % 10

        def turn(i, sh=sh, lab=lab, want=want):
            return sum(1 for j in want if sh[j] == sh[i] and lab[j] == lab[i] and j < i)
        assert p.images.tolist() == sorted(want, key=lambda i: (-sh[i], turn(i), lab[i], i))
        assert p.images.tolist()[:5] == select_unique(
            t, p.method, p.kept_by, "gmp_late", 0.9, n=5).tolist()


def test_gallery_panels_show_the_given_schedules_at_one_sparsity():
    t = pd.concat([_table("x", s, [True, True], [1.0, 0.5]) for s in
                   ("gmp_early", "oneshot", "floor", "gmp@0.40-0.64")]
                  + [_table("x", "gmp_late", [True, False], [1.0, 1.0], sparsity=0.5)],
                  ignore_index=True)
    panels = gallery.gallery_panels(t, 0.9, ["gmp_early", "oneshot", "gmp_late"])
    assert [p.schedule for p in panels] == ["gmp_early", "oneshot"]
    assert [p.schedule for p in gallery.gallery_panels(t, 0.9, schedules=["oneshot", "nope"])] \
        == ["oneshot"]
    assert gallery.gallery_panels(t, 0.5, ["gmp_late"])[0].images.tolist() == [0]


def test_caption_from_the_data():
    t = _table("x", "gmp_early", [True, False, True, True, True, True],
               [0.5, 1.0, 1.0, 0.5, 1.0, 0.75])
    panels = gallery.gallery_panels(t, 0.9, ["gmp_early"], n=3)
    text = gallery.caption(panels)
    assert gallery.RULE in text
    assert "x, gmp_early @ 0.9: 3 of 5 shown; pruned_share 1.00 to 0.75 (2 unanimous)" in text
    assert "wrong on 3 of them" in text
    tied = t.assign(pruned_ties=[True, False, False, True, False, False])
    assert "4 of 5 shown; pruned_share 1.00 to 0.50 (2 unanimous, 1 tied)" in gallery.caption(
        gallery.gallery_panels(tied, 0.9, ["gmp_early"], n=4))
    t2 = pd.concat([t, _table("y", "gmp_early", [True, False, True, False, False, False],
                              [1.0] * 6)], ignore_index=True)
    u = gallery.caption(gallery.unique_panels(t2, 0.9, ["gmp_early"]))
    assert "lost by x, kept by y, gmp_early @ 0.9: 3 of 3 shown" in u
    assert "lost by y, kept by x, gmp_early @ 0.9: no unique PIEs." in u


def test_selection_bad_input():
    t = _table("x", "gmp_early", [True], [1.0])
    with pytest.raises(ValueError, match="no rows for configuration"):
        select_pies(t, "x", "oneshot", 0.9)
    with pytest.raises(ValueError, match="positive integer"):
        select_pies(t, "x", "gmp_early", 0.9, n=0)
    with pytest.raises(ValueError, match="lacks columns"):
        gallery.gallery_panels(t.drop(columns="pruned_share"), 0.9, ["gmp_early"])
    with pytest.raises(ValueError, match="more than once"):
        select_pies(pd.concat([t, t]), "x", "gmp_early", 0.9)
    with pytest.raises(ValueError, match="different methods"):
        select_unique(t, "x", "x", "gmp_early", 0.9)


def test_upscale_nearest_blocks():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    y = gallery.upscale_nearest(x, 3)
    assert y.shape == (2, 12, 15, 3) and y.dtype == np.uint8
    for i in range(4):
        for j in range(5):
            block = y[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3, :]
            assert (block == x[:, :, i, j][:, None, None, :]).all()
    with pytest.raises(ValueError, match="uint8"):
        gallery.upscale_nearest(x.astype(float), 2)
    with pytest.raises(ValueError, match="shape"):
        gallery.upscale_nearest(x[0], 2)


# ------------------------------------------------------------------------------------------------
# the figures draw exactly the picked images, in rule order
def test_gallery_figures_show_the_picked_images(tmp_path):
    rng = np.random.default_rng(2)
    n = 40
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    t = pd.concat([_table(m, s, rng.random(n) < 0.5, rng.choice([0.5, 1.0], n))
                   for m in ("ce", "supcon") for s in ("gmp_early", "oneshot")], ignore_index=True)
    panels = gallery.gallery_panels(t, 0.9, ["gmp_early", "oneshot"], n=7)
    fig = plots.fig_pie_gallery(panels, images, upscale=2)
    drawn = [ax.images[0].get_array() for sub in fig.subfigs for ax in sub.axes if ax.images]
    want = [gallery.upscale_nearest(images[i:i + 1], 2)[0] for p in panels for i in p.images]
    assert len(drawn) == len(want) == 4 * 7
    assert all(np.array_equal(np.asarray(d), w) for d, w in zip(drawn, want, strict=True))
    paths = plots.save(fig, "F9_pie_gallery", tmp_path, "test")
    assert all(p.stat().st_size > 1000 for p in paths)
    plt.close(fig)

    upanels = gallery.unique_panels(t, 0.9, ["gmp_early", "oneshot"], n=5)
    fig = plots.fig_unique_pies(upanels, images)
    assert sum(1 for sub in fig.subfigs for ax in sub.axes if ax.images) == \
        sum(len(p.picked) for p in upanels)
    plt.close(fig)
    with pytest.raises(ValueError, match="test_images has only"):
        plots.fig_pie_gallery(panels, images[:2])
    fig = plots.fig_unique_pies([], images)  # nothing to show still makes a figure
    plt.close(fig)


def test_saved_pdf_is_byte_identical_when_redrawn(tmp_path):
    """No creation date in the PDF: re-running a notebook does not rewrite an unchanged figure."""
    import hashlib

    import matplotlib.pyplot as plt

    from pcl import plots

    digests = []
    for _ in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        plots.save(fig, "same", tmp_path, "scale label")
        plt.close(fig)
        digests.append(hashlib.sha256((tmp_path / "same.pdf").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
