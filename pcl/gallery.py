"""Which test images the PIE gallery (F9, F9b) shows: a stated, deterministic rule (:data:`RULE`;
README.md, "PIE gallery and the per-image table") picks them, never a hand, unanimous flips (what
pruning reliably takes away) before tie-broken split votes (closer to noise). In: a table shaped
like ``images.csv`` (:func:`pcl.evaluate.images_table`); out: image indices and their rows."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Sequence

import numpy as np
import pandas as pd

#: The selection rule in words (docstring, captions and README say the same).
RULE = ("the PIEs with the largest pruned_share (the fraction of the pruned population's models "
        "voting for its modal label); among equal shares, one image per true class in turn "
        "(classes in label order, each class's images by smaller image index)")
#: Columns of the per-image table the rules read.
REQUIRED = ("method", "schedule", "sparsity", "image", "label", "dense_modal", "pruned_modal",
            "pruned_share", "pie")
#: Columns a panel keeps for the images it shows.
SHOWN = ("image", "label", "dense_modal", "pruned_modal", "pruned_share")


@dataclass(frozen=True)
class Panel:
    """One gallery panel: the images the rule picked for one configuration, in rule order."""

    method: str  # whose PIEs these are (for a unique panel: the method that lost them)
    schedule: str
    sparsity: float
    picked: pd.DataFrame  # one row per shown image, columns SHOWN (+ pruned_ties), in rule order
    total: int  # how many candidates the rule chose from
    kept_by: str | None = None  # unique panels: the method that kept these images

    @property
    def images(self) -> np.ndarray:
        """Test-image indices shown, in rule order."""
        return self.picked["image"].to_numpy()

    @property
    def title(self) -> str:
        what, kind = ((f"lost by {self.method}, kept by {self.kept_by}", "unique PIEs") if self.kept_by
                      else (self.method, "PIEs"))
        return f"{what} · {self.schedule} @ {self.sparsity:g} · {len(self.picked)} of {self.total} {kind}"


def _check(images: pd.DataFrame, n: int = 1) -> None:
    missing = [c for c in REQUIRED if c not in images.columns]
    if missing:
        raise ValueError(f"the per-image table lacks columns {missing}; it needs {list(REQUIRED)} "
                         "(see pcl.evaluate.images_table)")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (images per panel) must be a positive integer; got {n!r}")


def _in_config(images: pd.DataFrame, method: str, schedule: str, sparsity: float) -> pd.Series:
    return ((images["method"] == method) & (images["schedule"] == schedule)
            & np.isclose(images["sparsity"].astype(float), float(sparsity)))


def config_rows(images: pd.DataFrame, method: str, schedule: str, sparsity: float) -> pd.DataFrame:
    """The rows of one configuration, sorted by image; a clear error if it is absent."""
    _check(images)
    sel = images[_in_config(images, method, schedule, sparsity)]
    if sel.empty:
        have = sorted({(m, s, float(p)) for m, s, p in
                       images[["method", "schedule", "sparsity"]].itertuples(index=False)})
        raise ValueError(f"no rows for configuration ({method!r}, {schedule!r}, {sparsity}); "
                         f"the table has {have}")
    sel = sel.sort_values("image", kind="stable")
    if sel["image"].duplicated().any():
        raise ValueError(f"configuration ({method!r}, {schedule!r}, {sparsity}) lists an image "
                         "more than once; one row per (image, configuration) is expected")
    return sel.reset_index(drop=True)


def rank(rows: pd.DataFrame, candidates: np.ndarray) -> np.ndarray:
    """Positions (into ``rows``) of the candidate rows in :data:`RULE` order. The turns over the
    classes matter: many PIEs are unanimous, and a test split sorted by class would otherwise fill
    every panel with its first class."""
    candidates = np.asarray(candidates, dtype=bool)
    if candidates.shape != (len(rows),):
        raise ValueError(f"candidates must be a bool mask of shape ({len(rows)},); "
                         f"got shape {candidates.shape}")
    pos = np.flatnonzero(candidates)
    share = rows["pruned_share"].to_numpy(dtype=float)[pos]
    image, label = (rows[c].to_numpy()[pos] for c in ("image", "label"))
    order = np.lexsort((image, label, -share))  # by share, then class, then index
    # turn: how many images of the same (share, class) come before this one
    turn = np.empty(len(pos), dtype=np.int64)
    turn[order] = pd.DataFrame({"s": share[order], "l": label[order]}).groupby(["s", "l"]).cumcount()
    return pos[np.lexsort((image, label, turn, -share))]  # last key is the primary one


def unique_mask(images: pd.DataFrame, lost_by: str, kept_by: str, schedule: str,
                sparsity: float) -> tuple[pd.DataFrame, np.ndarray]:
    """(rows of ``lost_by``'s configuration, mask): PIEs of ``lost_by`` that are not PIEs of
    ``kept_by`` at the same schedule and sparsity."""
    if lost_by == kept_by:
        raise ValueError(f"lost_by and kept_by must be different methods; got {lost_by!r} twice")
    a, b = (config_rows(images, m, schedule, sparsity) for m in (lost_by, kept_by))
    if not np.array_equal(a["image"].to_numpy(), b["image"].to_numpy()):
        raise ValueError(f"{lost_by!r} and {kept_by!r} at ({schedule!r}, {sparsity}) cover "
                         f"different test images ({len(a)} vs {len(b)} rows); cannot compare")
    return a, a["pie"].to_numpy(bool) & ~b["pie"].to_numpy(bool)


def _panel(images: pd.DataFrame, method: str, schedule: str, sparsity: float, n: int,
           kept_by: str | None = None) -> Panel:
    """The panel of ``method``'s PIEs, or with ``kept_by`` of its unique PIEs against that method."""
    if kept_by is None:
        rows = config_rows(images, method, schedule, sparsity)
        mask = rows["pie"].to_numpy(bool)
    else:
        rows, mask = unique_mask(images, method, kept_by, schedule, sparsity)
    order = rank(rows, mask)[:n]
    cols = list(SHOWN) + (["pruned_ties"] if "pruned_ties" in rows.columns else [])
    return Panel(method, schedule, float(sparsity), rows.iloc[order][cols].reset_index(drop=True),
                 int(mask.sum()), kept_by)


def gallery_panels(images: pd.DataFrame, sparsity: float, schedules: Sequence[str],
                   n: int = 24) -> list[Panel]:
    """F9: one panel per (method, schedule of ``schedules``: the preset's) present at
    ``sparsity``, method-major, each with up to ``n`` PIEs by :data:`RULE`."""
    _check(images, n)
    return [_panel(images, m, sch, sparsity, n) for m in sorted(images["method"].unique())
            for sch in schedules if _in_config(images, m, sch, sparsity).any()]


def unique_panels(images: pd.DataFrame, sparsity: float, schedules: Sequence[str],
                  n: int = 24) -> list[Panel]:
    """F9b: for every ordered pair of methods (both directions) and every schedule where both
    are present at ``sparsity``, up to ``n`` PIEs lost by the first and kept by the second, by
    :data:`RULE`; pair-major, schedule-minor."""
    _check(images, n)
    return [_panel(images, a, sch, sparsity, n, kept_by=b)
            for a, b in permutations(sorted(images["method"].unique()), 2) for sch in schedules
            if all(_in_config(images, m, sch, sparsity).any() for m in (a, b))]


def caption(panels: Sequence[Panel]) -> str:
    """A Markdown caption built from the panels: the rule, and per panel how many images it
    showed out of how many, and the range of pruned_share among them."""
    if not panels:
        return "No configuration to show: the table has no pruned population at this sparsity."
    unique = panels[0].kept_by is not None
    short = "unique PIEs" if unique else "PIEs"
    what = f"{short} (lost by one method, kept by the other)" if unique else short
    n = max(len(p.picked) for p in panels)
    lines = [f"Each panel shows up to {n} {what} of one configuration, chosen by rule: {RULE}. "
             "Under each image: true label / dense modal label / pruned modal label."]
    for p in panels:
        head = (f"lost by {p.method}, kept by {p.kept_by}" if unique else p.method)
        if len(p.picked) == 0:
            lines.append(f"- {head}, {p.schedule} @ {p.sparsity:g}: no {short}.")
            continue
        sh = p.picked["pruned_share"].to_numpy(float)
        wrong = int((p.picked["pruned_modal"] != p.picked["label"]).sum())
        ties = (f", {int(p.picked['pruned_ties'].astype(bool).sum())} tied"
                if "pruned_ties" in p.picked.columns else "")
        lines.append(f"- {head}, {p.schedule} @ {p.sparsity:g}: {len(p.picked)} of {p.total} "
                     f"shown; pruned_share {sh.max():.2f} to {sh.min():.2f} "
                     f"({int((sh >= 1.0).sum())} unanimous{ties}); the pruned modal label is "
                     f"wrong on {wrong} of them.")
    return "\n".join(lines)


def upscale_nearest(images: np.ndarray, factor: int) -> np.ndarray:
    """(k, 3, H, W) uint8 images -> (k, H*factor, W*factor, 3), each pixel repeated as a block
    (nearest neighbour), so the picture stays the 32x32 the networks saw in any viewer."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must have shape (k, 3, H, W); got {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (raw pixels); got {x.dtype}")
    if not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive integer; got {factor!r}")
    return x.transpose(0, 2, 3, 1).repeat(factor, axis=1).repeat(factor, axis=2)
