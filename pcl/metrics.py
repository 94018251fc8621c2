"""Analysis metrics for the pruning / contrastive-learning study.

All functions are pure: arrays in, arrays out.  Inputs may be numpy arrays,
array-likes or torch tensors (they are moved to CPU numpy where needed);
outputs are numpy arrays, pandas DataFrames or plain Python scalars.

Contents
--------
* Pruning-identified exemplars (PIEs): :func:`modal_labels`, :func:`pie_mask`,
  :func:`pie_overlap`, :func:`jaccard_matrix`, :func:`per_class_counts`,
  :func:`common_unique`.
* Representation quality: :func:`q_score`.
* k-NN probes live in :mod:`pcl.knn` (an exact engine of their own).
* Prediction depth: :func:`prediction_depth` (pass the labels as ``final_pred`` for the
  label-referenced variant).
* Visualisation: :func:`umap_embedding`.
* Intervals over seeds live in :mod:`pcl.intervals` (one method behind every claim).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import pandas as pd

__all__ = [
    "modal_labels",
    "vote_counts",
    "tied_votes",
    "pie_mask",
    "pie_overlap",
    "jaccard_matrix",
    "per_class_counts",
    "common_unique",
    "q_score",
    "prediction_depth",
    "umap_embedding",
]

ArrayLike = Any  # numpy array, torch tensor or nested sequence

COMMON_UNIQUE_KINDS = ("common", "only_a", "only_b")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Convert a torch tensor / array-like to a numpy array (no copy if possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_int_labels(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """Return ``x`` as an int64 array of the given rank with non-negative entries."""
    arr = _to_numpy(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must contain integer class indices")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must contain non-negative class indices")
    return arr


def _as_bool_mask(x: ArrayLike, name: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _check_num_classes(labels_max: int, num_classes: int | None, name: str) -> int:
    if num_classes is None:
        return labels_max + 1
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels_max >= num_classes:
        raise ValueError(
            f"{name} contains class index {labels_max} >= num_classes={num_classes}"
        )
    return int(num_classes)


# --------------------------------------------------------------------------
# PIEs
# --------------------------------------------------------------------------
def modal_labels(preds: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Most frequent predicted label per image over a population of models.

    Parameters
    ----------
    preds : int array of shape (models, images)
    num_classes : number of classes; inferred as ``preds.max() + 1`` if None.

    Returns
    -------
    int64 array of shape (images,).  Ties go to the smallest class index.
    """
    return vote_counts(preds, num_classes).argmax(axis=1).astype(np.int64)  # first max = smallest


def vote_counts(preds: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """(images, classes) number of a population's models voting for each class.

    One comparison per class: for the few models of a population this is as fast as a bincount,
    and it is what every modal statistic (modal label, vote share, ties) is computed from.
    """
    p = _as_int_labels(preds, "preds", 2)
    if p.shape[0] == 0:
        raise ValueError("preds must contain at least one model (row)")
    c = _check_num_classes(int(p.max()) if p.size else 0, num_classes, "preds")
    return np.stack([(p == k).sum(0, dtype=np.int64) for k in range(c)], axis=1)


def tied_votes(preds: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Per image: whether two or more classes share the top vote (the tie rule then decides)."""
    c = vote_counts(preds, num_classes)
    return (c == c.max(1, keepdims=True)).sum(1) > 1


def pie_mask(
    dense_preds: ArrayLike, pruned_preds: ArrayLike, num_classes: int | None = None
) -> np.ndarray:
    """Pruning-identified exemplars: images whose modal label changes under pruning.

    ``dense_preds`` has shape (n_dense_models, images) and ``pruned_preds``
    (n_pruned_models, images); the model counts may differ, the image counts
    may not.  Returns a bool array of shape (images,).
    """
    d = _as_int_labels(dense_preds, "dense_preds", 2)
    p = _as_int_labels(pruned_preds, "pruned_preds", 2)
    if d.shape[1] != p.shape[1]:
        raise ValueError(
            "dense_preds and pruned_preds must cover the same images: got "
            f"{d.shape[1]} and {p.shape[1]} images (shapes {d.shape} vs {p.shape})"
        )
    if num_classes is None and d.size and p.size:
        num_classes = int(max(d.max(), p.max())) + 1
    return modal_labels(d, num_classes) != modal_labels(p, num_classes)


def pie_overlap(a: ArrayLike, b: ArrayLike) -> dict[str, int | float]:
    """Overlap statistics of two boolean masks over the same images.

    Returns a dict with ``intersection``, ``union``, ``only_a``, ``only_b``
    (ints) and ``jaccard`` = intersection / union (float).  By convention the
    Jaccard index of two empty masks (union 0) is 0.0.
    """
    ma = _as_bool_mask(a, "a")
    mb = _as_bool_mask(b, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"masks must have the same length, got {ma.shape} and {mb.shape}")
    inter = int(np.count_nonzero(ma & mb))
    union = int(np.count_nonzero(ma | mb))
    return {
        "intersection": inter,
        "union": union,
        "jaccard": float(inter / union) if union else 0.0,
        "only_a": int(np.count_nonzero(ma & ~mb)),
        "only_b": int(np.count_nonzero(~ma & mb)),
    }


def jaccard_matrix(masks: Mapping[str, ArrayLike]) -> pd.DataFrame:
    """Pairwise Jaccard indices of named masks as a square DataFrame.

    Index and columns are the mask names (in the mapping's order).  Empty
    pairs follow :func:`pie_overlap` (Jaccard 0.0).
    """
    names = list(masks)
    arrs = [_as_bool_mask(masks[n], f"masks[{n!r}]") for n in names]
    if arrs and len({a.shape for a in arrs}) != 1:
        raise ValueError("all masks must have the same length")
    out = np.zeros((len(names), len(names)), dtype=np.float64)
    if arrs:
        m = np.stack(arrs).astype(np.int64)  # (n_masks, images)
        inter = m @ m.T
        sizes = np.diag(inter)
        union = sizes[:, None] + sizes[None, :] - inter
        np.divide(inter, union, out=out, where=union > 0)
    return pd.DataFrame(out, index=pd.Index(names), columns=pd.Index(names))


def per_class_counts(mask: ArrayLike, labels: ArrayLike, num_classes: int = 10) -> np.ndarray:
    """Number of True entries of ``mask`` per true class; int64 array (num_classes,)."""
    m = _as_bool_mask(mask, "mask")
    y = _as_int_labels(labels, "labels", 1)
    if m.shape != y.shape:
        raise ValueError(f"mask and labels must have the same length, got {m.shape} and {y.shape}")
    if y.size:
        _check_num_classes(int(y.max()), num_classes, "labels")
    return np.bincount(y[m], minlength=num_classes).astype(np.int64)


def common_unique(
    a: ArrayLike, b: ArrayLike, labels: ArrayLike, num_classes: int = 10
) -> pd.DataFrame:
    """Per-class counts of images flagged by both masks / only ``a`` / only ``b``.

    Returns a tidy DataFrame with columns ``class``, ``kind``, ``count`` and
    one row per (class, kind), kind in ("common", "only_a", "only_b"),
    ordered by class then kind.
    """
    ma = _as_bool_mask(a, "a")
    mb = _as_bool_mask(b, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"masks must have the same length, got {ma.shape} and {mb.shape}")
    parts = {
        "common": per_class_counts(ma & mb, labels, num_classes),
        "only_a": per_class_counts(ma & ~mb, labels, num_classes),
        "only_b": per_class_counts(~ma & mb, labels, num_classes),
    }
    counts = np.stack([parts[k] for k in COMMON_UNIQUE_KINDS], axis=1)  # (C, 3)
    return pd.DataFrame(
        {
            "class": np.repeat(np.arange(num_classes), len(COMMON_UNIQUE_KINDS)),
            "kind": list(COMMON_UNIQUE_KINDS) * num_classes,
            "count": counts.ravel().astype(np.int64),
        }
    )


# --------------------------------------------------------------------------
# Q-score
# --------------------------------------------------------------------------
def q_score(features: ArrayLike) -> np.ndarray:
    """Per-sample Q-score of a feature matrix (images, dim), computed in float64.

    With ``z = h / ||h||_2`` per row: ``Q = ((max z - mean z) / std z) / ||z||_1``
    (std with ddof=0).  Q is invariant to positive scaling of a row.  Rows with
    zero norm or zero spread (constant rows), or non-finite entries, give NaN;
    a single RuntimeWarning reports how many rows were NaN.
    """
    h = _to_numpy(features).astype(np.float64, copy=False)
    if h.ndim != 2:
        raise ValueError(f"features must be 2-D (images, dim), got shape {h.shape}")
    if h.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    if h.shape[1] == 0:
        raise ValueError("features must have at least one dimension")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        norm2 = np.linalg.norm(h, axis=1, keepdims=True)
        z = h / norm2
        std = z.std(axis=1)
        q = (z.max(axis=1) - z.mean(axis=1)) / std / np.abs(z).sum(axis=1)
    # Constant rows have zero spread mathematically, but the float mean/std may
    # be off by an ulp; detect them exactly on the raw values instead.
    bad = (np.ptp(h, axis=1) == 0) | (norm2[:, 0] == 0) | (std == 0) | ~np.isfinite(q)
    if bad.any():
        q[bad] = np.nan
        warnings.warn(
            f"q_score: {int(bad.sum())} of {h.shape[0]} rows have zero norm, zero "
            "spread or non-finite values; their Q-score is NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    return q


# --------------------------------------------------------------------------
# prediction depth
# --------------------------------------------------------------------------
def prediction_depth(probe_preds: ArrayLike, final_pred: ArrayLike) -> np.ndarray:
    """Prediction depth of each image.

    ``probe_preds`` has shape (taps, images) (taps ordered shallow to deep) and
    ``final_pred`` shape (images,).  The depth of an image is the smallest tap
    index ``l`` such that the probes at ``l`` and every deeper tap agree with
    ``final_pred``; it equals ``taps`` when even the last probe disagrees.
    Pass the true labels as ``final_pred`` for the label-referenced variant.
    Returns int64 (images,).
    """
    p = _to_numpy(probe_preds)
    f = _to_numpy(final_pred)
    if p.ndim != 2:
        raise ValueError(f"probe_preds must be 2-D (taps, images), got shape {p.shape}")
    if f.shape != (p.shape[1],):
        raise ValueError(
            f"final_pred must have shape ({p.shape[1]},) to match probe_preds, got {f.shape}"
        )
    taps = p.shape[0]
    agree = p == f[None, :]
    trailing = np.logical_and.accumulate(agree[::-1], axis=0).sum(axis=0)
    return (taps - trailing).astype(np.int64)


# --------------------------------------------------------------------------
# UMAP
# --------------------------------------------------------------------------
def umap_embedding(features: ArrayLike, random_state: int = 0, n_neighbors: int = 15,
                   min_dist: float = 0.1) -> np.ndarray:
    """2-D UMAP embedding (n, 2) of a feature matrix; deterministic for fixed ``random_state``."""
    with warnings.catch_warnings():  # umap's import pulls tqdm.auto, which warns in papermill
        warnings.simplefilter("ignore")
        import umap  # lazy: slow import (numba)

    x = _to_numpy(features).astype(np.float32, copy=False)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D, got shape {x.shape}")
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        random_state=random_state,
    )
    with warnings.catch_warnings():
        # umap warns that a fixed random_state forces n_jobs=1; that is intended.
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        emb = reducer.fit_transform(x)
    return np.asarray(emb, dtype=np.float64)
