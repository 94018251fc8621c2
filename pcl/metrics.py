"""The study's metrics (PIEs, Q-Score, prediction depth, UMAP; docs/PROTOCOL.md, "Metrics"): pure
functions, numpy arrays, array-likes or torch tensors in; numpy, pandas or Python scalars out."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

ArrayLike = Any  # numpy array, torch tensor or nested sequence

COMMON_UNIQUE_KINDS = ("common", "only_a", "only_b")


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_int_labels(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """``x`` as int64 of rank ``ndim``, checked to hold non-negative integer class indices."""
    arr = _to_numpy(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer) and not np.all(np.equal(np.mod(arr, 1), 0)):
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


def _mask_pair(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ma, mb = _as_bool_mask(a, "a"), _as_bool_mask(b, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"masks must have the same length, got {ma.shape} and {mb.shape}")
    return ma, mb


def _check_num_classes(labels_max: int, num_classes: int | None, name: str) -> int:
    if num_classes is None:
        return labels_max + 1
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels_max >= num_classes:
        raise ValueError(f"{name} contains class index {labels_max} >= num_classes={num_classes}")
    return int(num_classes)


def modal_labels(preds: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """int64 (images,): the most frequent label of every image over ``preds`` (models, images),
    ties to the smallest class; ``num_classes`` defaults to ``preds.max() + 1``."""
    return vote_counts(preds, num_classes).argmax(axis=1).astype(np.int64)  # first max = smallest


def vote_counts(preds: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """(images, classes) votes of a population's models per class, what every modal statistic is
    computed from (one comparison per class: for a population's few models as fast as a bincount)."""
    p = _as_int_labels(preds, "preds", 2)
    if p.shape[0] == 0:
        raise ValueError("preds must contain at least one model (row)")
    c = _check_num_classes(int(p.max()) if p.size else 0, num_classes, "preds")
    return np.stack([(p == k).sum(0, dtype=np.int64) for k in range(c)], axis=1)


def tied_votes(preds: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Per image: whether two or more classes share the top vote (the tie rule then decides)."""
    c = vote_counts(preds, num_classes)
    return (c == c.max(1, keepdims=True)).sum(1) > 1


def pie_mask(dense_preds: ArrayLike, pruned_preds: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """bool (images,): the pruning-identified exemplars, images whose modal label changes under
    pruning; the two populations (models, images) may differ in size."""
    d, p = _as_int_labels(dense_preds, "dense_preds", 2), _as_int_labels(pruned_preds, "pruned_preds", 2)
    if d.shape[1] != p.shape[1]:
        raise ValueError("dense_preds and pruned_preds must cover the same images: got "
                         f"{d.shape[1]} and {p.shape[1]} images (shapes {d.shape} vs {p.shape})")
    if num_classes is None and d.size and p.size:
        num_classes = int(max(d.max(), p.max())) + 1
    return modal_labels(d, num_classes) != modal_labels(p, num_classes)


def pie_overlap(a: ArrayLike, b: ArrayLike) -> dict[str, int | float]:
    """Counts ``intersection``, ``union``, ``only_a``, ``only_b`` of two masks over the same
    images, and ``jaccard`` = intersection / union (0.0 for two empty masks)."""
    ma, mb = _mask_pair(a, b)
    inter, union = int(np.count_nonzero(ma & mb)), int(np.count_nonzero(ma | mb))
    return {"intersection": inter, "union": union, "jaccard": float(inter / union) if union else 0.0,
            "only_a": int(np.count_nonzero(ma & ~mb)), "only_b": int(np.count_nonzero(~ma & mb))}


def per_class_counts(mask: ArrayLike, labels: ArrayLike, num_classes: int = 10) -> np.ndarray:
    """Number of True entries of ``mask`` per true class; int64 array (num_classes,)."""
    m, y = _as_bool_mask(mask, "mask"), _as_int_labels(labels, "labels", 1)
    if m.shape != y.shape:
        raise ValueError(f"mask and labels must have the same length, got {m.shape} and {y.shape}")
    if y.size:
        _check_num_classes(int(y.max()), num_classes, "labels")
    return np.bincount(y[m], minlength=num_classes).astype(np.int64)


def common_unique(a: ArrayLike, b: ArrayLike, labels: ArrayLike, num_classes: int = 10) -> pd.DataFrame:
    """Per-class counts of the images flagged by both masks / only ``a`` / only ``b``: a tidy table
    (``class``, ``kind``, ``count``), one row per class and kind of :data:`COMMON_UNIQUE_KINDS`,
    class-major."""
    ma, mb = _mask_pair(a, b)
    counts = np.stack([per_class_counts(m, labels, num_classes) for m in (ma & mb, ma & ~mb, ~ma & mb)],
                      axis=1)  # (C, 3)
    return pd.DataFrame({"class": np.repeat(np.arange(num_classes), len(COMMON_UNIQUE_KINDS)),
                         "kind": list(COMMON_UNIQUE_KINDS) * num_classes,
                         "count": counts.ravel().astype(np.int64)})


def q_score(features: ArrayLike) -> np.ndarray:
    """Q-score (images,) of a feature matrix (images, dim) in float64: with ``z = h / ||h||_2`` per
    row, ``Q = ((max z - mean z) / std z) / ||z||_1`` (std with ddof=0), invariant to positive
    scaling of a row. Rows with zero norm, zero spread or non-finite entries give NaN, reported by
    one RuntimeWarning."""
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
    # a constant row's float std may be off by an ulp: detect those exactly on the raw values
    bad = (np.ptp(h, axis=1) == 0) | (norm2[:, 0] == 0) | (std == 0) | ~np.isfinite(q)
    if bad.any():
        q[bad] = np.nan
        warnings.warn(f"q_score: {int(bad.sum())} of {h.shape[0]} rows have zero norm, zero spread or "
                      "non-finite values; their Q-score is NaN", RuntimeWarning, stacklevel=2)
    return q


def prediction_depth(probe_preds: ArrayLike, final_pred: ArrayLike) -> np.ndarray:
    """int64 (images,): the smallest tap ``l`` of ``probe_preds`` (taps shallow to deep, images)
    from which every probe agrees with ``final_pred`` (images,); ``taps`` when even the last
    disagrees. Pass the true labels as ``final_pred`` for the label-referenced variant."""
    p, f = _to_numpy(probe_preds), _to_numpy(final_pred)
    if p.ndim != 2:
        raise ValueError(f"probe_preds must be 2-D (taps, images), got shape {p.shape}")
    if f.shape != (p.shape[1],):
        raise ValueError(f"final_pred must have shape ({p.shape[1]},) to match probe_preds, got {f.shape}")
    trailing = np.logical_and.accumulate(p[::-1] == f[None, :], axis=0).sum(axis=0)
    return (p.shape[0] - trailing).astype(np.int64)


def umap_embedding(features: ArrayLike, random_state: int = 0, n_neighbors: int = 15,
                   min_dist: float = 0.1) -> np.ndarray:
    """2-D UMAP embedding (n, 2) of a feature matrix; deterministic for fixed ``random_state``."""
    with warnings.catch_warnings():  # umap's import pulls tqdm.auto, which warns in papermill
        warnings.simplefilter("ignore")
        import umap  # lazy: slow import (numba)

    x = _to_numpy(features).astype(np.float32, copy=False)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D, got shape {x.shape}")
    with warnings.catch_warnings():  # a fixed random_state forces n_jobs=1, as intended
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        emb = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist,
                        random_state=random_state).fit_transform(x)
    return np.asarray(emb, dtype=np.float64)
