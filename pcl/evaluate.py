"""From finished runs to tidy tables: accuracy, PIEs, Q-Score, prediction depth.

Every run stores its test logits and penultimate features when it finishes; prediction depth's
k-NN probe predictions are computed once per run and stored in the run folder (``eval/``), so a
table is rebuilt from disk in seconds and nothing is ever retrained or re-evaluated.
Populations are keyed by :class:`~pcl.keys.PopKey` (method, population label, sparsity); the
label is a config's :attr:`~pcl.config.RunConfig.schedule` ('dense', 'gmp_early', 'oneshot',
'gmp@0.30-0.54' for a point of the onset sweep, 'floor' for the noise floor).
"""
from __future__ import annotations

import hashlib
import io
import sys
from collections import defaultdict

import numpy as np
import pandas as pd
import torch

from . import __version__, knn, metrics, provenance
from .config import Preset, RunConfig, resolve_device
from .data import Dataset, load_for_config
from .keys import PopKey
from .models import WideResNet, eval_forward
from .store import RunStore, _atomic_write_bytes
from .study import onset_configs, plan
from .train import load_model


def population_key(preset: Preset, cfg: RunConfig) -> PopKey:
    """(method, schedule, sparsity); dense runs with seeds >= preset.seeds form the noise-floor
    population (method, 'floor', 0.0)."""
    sch = "floor" if cfg.pruning == "none" and cfg.seed >= preset.seeds else cfg.schedule
    return PopKey(cfg.method, sch, cfg.sparsity)


def populations(preset: Preset, store: RunStore | None = None) -> dict[PopKey, list[RunConfig]]:
    """Every population of the study, its configs ordered by seed; the noise floor's second dense
    population is keyed (method, 'floor', 0.0).

    With ``store``, only finished runs are kept (and empty populations dropped).
    """
    out: dict[PopKey, list[RunConfig]] = defaultdict(list)
    for c in plan(preset):
        if store is None or store.is_done(c):
            out[population_key(preset, c)].append(c)
    return {k: sorted(v, key=lambda c: c.seed) for k, v in out.items() if v}


def run_table(preset: Preset, store: RunStore) -> pd.DataFrame:
    """One row per finished run: method, schedule, sparsity, seed, accuracy, measured sparsity,
    and its provenance: a hash of its test logits and its machine fingerprint
    (:mod:`pcl.provenance`; None for a run stored without a machine record)."""
    rows = []
    for (m, sch, s), cfgs in populations(preset, store).items():
        for c in cfgs:
            h = store.load_history(c)
            secs = sum(e["seconds"] for e in h["epochs"])
            rows.append({"method": m, "schedule": sch, "sparsity": s, "seed": c.seed,
                         "test_acc": h["test_acc"], "measured_sparsity": h["sparsity"],
                         "train_seconds": secs, "run": c.run_hash(),
                         "logits_hash": provenance.logits_hash(store.load_logits(c)),
                         "fingerprint": provenance.fingerprint_key(store.load_env(c))})
    return pd.DataFrame(rows)


def predictions(store: RunStore, cfgs: list[RunConfig]) -> np.ndarray:
    """(models, images) predicted classes of a population."""
    return np.stack([store.load_logits(c).argmax(1).numpy() for c in cfgs])


def population_predictions(preset: Preset, store: RunStore) -> dict[PopKey, np.ndarray]:
    """(models, images) predictions of every finished population, loaded once."""
    return {key: predictions(store, cfgs) for key, cfgs in populations(preset, store).items()}


def pie_table(preset: Preset, store: RunStore, labels: np.ndarray) -> pd.DataFrame:
    """One row per test image per pruned population: modal labels, true label, PIE flag."""
    preds = population_predictions(preset, store)
    k = preset.ce.num_classes
    frames = []
    for key, pruned in preds.items():
        key = PopKey(*key)
        if key.is_dense or PopKey.dense(key.method) not in preds:
            continue
        dense = preds[PopKey.dense(key.method)]
        frames.append(pd.DataFrame({
            "method": key.method, "schedule": key.schedule, "sparsity": key.sparsity,
            "image": np.arange(len(labels)),
            "label": labels, "dense_modal": metrics.modal_labels(dense, k),
            "pruned_modal": metrics.modal_labels(pruned, k),
            "pie": metrics.pie_mask(dense, pruned, k), "models": len(pruned)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def qscore_table(preset: Preset, store: RunStore, labels: np.ndarray) -> pd.DataFrame:
    """One row per test image per population: Q-Score averaged over the population's models."""
    frames = []
    for (m, sch, s), cfgs in populations(preset, store).items():
        q = np.stack([metrics.q_score(store.load_features(c).numpy()) for c in cfgs])
        frames.append(pd.DataFrame({"method": m, "schedule": sch, "sparsity": s,
                                    "image": np.arange(len(labels)), "label": labels,
                                    "qscore": np.nanmean(q, 0) if np.isfinite(q).any() else np.nan,
                                    "models": len(cfgs)}))
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------------
def tap_features(net: WideResNet, images: torch.Tensor, device: torch.device,
                 batch_size: int | None = None) -> list[torch.Tensor]:
    """Pooled representation at every probe tap, for all ``images`` (list over taps, on CPU)."""
    return eval_forward(net, images, device, net.forward_taps, batch_size)


def probe_predictions(cfg: RunConfig, store: RunStore, data: Dataset, k: int = 30,
                      train_images: int | None = None, device=None) -> np.ndarray:
    """(taps, test images) k-NN predictions at every tap, fitted on the training split.

    Stored in the run folder as ``eval/probes-k{k}-n{train_images}.pt``; computed once.
    """
    device = resolve_device(device)
    n = len(data.train) if train_images is None else min(train_images, len(data.train))

    def compute() -> np.ndarray:
        net = load_model(cfg, store, device).to(memory_format=torch.channels_last)
        idx = torch.linspace(0, len(data.train) - 1, n).long()  # deterministic, class-mixed
        tr = tap_features(net, data.train.images[idx], device)
        te = tap_features(net, data.test.images, device)
        ytr = data.train.labels[idx]
        preds = knn.knn_predict_many(tr, ytr, te, k=k, num_classes=cfg.num_classes, device=device)
        return preds.astype(np.int16)

    return np.asarray(store.artifact(cfg, f"probes-k{k}-n{n}", compute))


def depth_populations(preset: Preset, store: RunStore) -> dict[PopKey, list[RunConfig]]:
    """The populations prediction depth is measured on: dense and every schedule at the
    headline sparsity, ``pd_models`` models each."""
    pops = populations(preset, store)
    return {k: v[:preset.pd_models] for k, v in pops.items()
            if k.is_dense or k.sparsity == preset.headline_sparsity}


def depth_table(preset: Preset, store: RunStore, data: Dataset, device=None,
                progress: bool = True) -> pd.DataFrame:
    """One row per test image per population: mean prediction depth over ``pd_models`` models,
    against the network's own prediction ('depth') and against the true label ('depth_label')."""
    from tqdm import tqdm

    labels = data.test.labels.numpy()
    pops = depth_populations(preset, store)
    jobs = [(k, c) for k, cfgs in pops.items() for c in cfgs]
    per: dict[PopKey, list] = defaultdict(list)
    for key, c in tqdm(jobs, desc="prediction depth", disable=not progress, mininterval=30,
                       file=sys.stdout):
        probes = probe_predictions(c, store, data, preset.knn_k, preset.pd_train_images, device)
        final = store.load_logits(c).argmax(1).numpy()
        per[key].append((metrics.prediction_depth(probes, final),
                         metrics.prediction_depth(probes, labels)))
    frames = []
    for (m, sch, s), vals in per.items():
        frames.append(pd.DataFrame({
            "method": m, "schedule": sch, "sparsity": s, "image": np.arange(len(labels)),
            "label": labels, "depth": np.mean([v[0] for v in vals], 0),
            "depth_label": np.mean([v[1] for v in vals], 0), "models": len(vals),
            "taps": probes.shape[0]}))
    return pd.concat(frames, ignore_index=True)


def onset_begins(preset: Preset) -> dict[str, float]:
    """Schedule label -> GMP begin of every point of the onset curve: exactly the runs the
    preset's sweep plans, and the schedules it declares points (``onset_points_from``)."""
    m = preset.methods[0]
    cfgs = [preset.run(m, 0, n, preset.onset_sparsity) for n in preset.onset_points_from]
    return {c.schedule: c.gmp_window[0] for c in cfgs + onset_configs(preset, m, 0)}


def onset_table(runs: pd.DataFrame, counts: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """The pruning-onset curve at ``onset_sparsity``: one row per (method, begin) with the mean
    accuracy and the PIE count (with its interval when ``counts`` has one), over the points
    :func:`onset_begins` names."""
    s = preset.onset_sparsity
    acc = runs[runs.sparsity == s].groupby(["method", "schedule"], as_index=False).test_acc.mean()
    d = acc.merge(counts[counts.sparsity == s], on=["method", "schedule"])
    begins = onset_begins(preset)
    d = d[d.schedule.isin(begins)].assign(begin=lambda x: x.schedule.map(begins))
    cols = ["method", "schedule", "begin", "sparsity", "pies"]
    cols += [c for c in ("ci_low", "ci_high") if c in d] + ["test_acc"]
    return d[cols].sort_values(
        ["method", "begin"], ignore_index=True)


def study_data(preset: Preset, data_root: str | None = None) -> Dataset:
    """The (subset) dataset every run of ``preset`` uses."""
    return load_for_config(preset.ce, data_root)


def umap_subset(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed random subset of ``size`` of ``n`` test images (sorted indices)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def umap_of_run(cfg: RunConfig, store: RunStore, idx: np.ndarray, random_state: int = 0) -> np.ndarray:
    """2-D UMAP of one run's test features on images ``idx``; stored in the run folder."""
    digest = hashlib.sha256(np.ascontiguousarray(idx, dtype=np.int64).tobytes()).hexdigest()[:10]
    key = f"umap-n{len(idx)}-{digest}-rs{random_state}"

    def compute() -> np.ndarray:
        feats = store.load_features(cfg).numpy()[idx]
        return metrics.umap_embedding(feats, random_state=random_state)

    return np.asarray(store.artifact(cfg, key, compute))


# ------------------------------------------------------------------------------------------------
#: The study-wide tidy tables :func:`study_table` caches, and how each is built.
TABLES = ("runs", "pies", "qscores", "depths")
#: Bumped when a table's columns change, so a cached table of an older build is rebuilt
#: (2: run rows carry ``logits_hash`` and ``fingerprint``).
TABLE_SCHEMA = 2


def _table_fingerprint(preset: Preset, store: RunStore, name: str) -> str:
    """Changes whenever a run finishes (or the preset, the table or pcl's version changes)."""
    runs = sorted(c.run_hash() for cfgs in populations(preset, store).values() for c in cfgs)
    blob = "|".join([__version__, name, str(TABLE_SCHEMA), repr(preset), *runs])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def study_table(name: str, preset: Preset, store: RunStore, data_root: str | None = None,
                data: Dataset | None = None, progress: bool = False) -> pd.DataFrame:
    """One of the study's tidy tables (:data:`TABLES`), computed once and cached in the run store
    (``<store>/.tables/``), keyed by the finished runs it is built from: notebooks 04-09 read it
    instead of each recomputing it, and it is rebuilt as soon as another run finishes.
    ``data`` (the study's dataset) is loaded from ``data_root`` when needed and not given."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; allowed: {', '.join(map(repr, TABLES))}")
    path = store.root / ".tables" / f"{preset.name}-{name}-{_table_fingerprint(preset, store, name)}.pkl"
    if path.exists():
        return pd.read_pickle(path)
    if name != "runs" and data is None:
        data = study_data(preset, data_root)
    if name == "runs":
        table = run_table(preset, store)
    elif name == "pies":
        table = pie_table(preset, store, data.test.labels.numpy())
    elif name == "qscores":
        table = qscore_table(preset, store, data.test.labels.numpy())
    else:
        table = depth_table(preset, store, data, progress=progress)
    buf = io.BytesIO()
    table.to_pickle(buf)
    _atomic_write_bytes(buf.getvalue(), path)
    for old in path.parent.glob(f"{preset.name}-{name}-*.pkl"):  # superseded versions
        if old != path:
            old.unlink(missing_ok=True)
    return table


# ------------------------------------------------------------------------------------------------
#: Columns of ``images.csv`` (:func:`images_table`), in order; the README documents each one.
IMAGE_COLUMNS = ("method", "schedule", "sparsity", "image", "label", "dense_modal", "pruned_modal",
                 "dense_share", "pruned_share", "pie", "dense_ties", "pruned_ties", "qscore_dense",
                 "qscore_pruned", "depth_dense", "depth_pruned", "models", "dense_models")


def _votes(preds: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(modal label, share of models voting for it, whether the top vote was tied) per image."""
    counts = metrics.vote_counts(preds, num_classes)
    top = counts.max(1)
    return counts.argmax(1), top / preds.shape[0], (counts == top[:, None]).sum(1) > 1


def _per_image(table: pd.DataFrame | None, column: str, n: int) -> dict[PopKey, np.ndarray]:
    """``table[column]`` as one length-``n`` array per (method, schedule, sparsity), NaN where
    an image has no row."""
    out: dict[PopKey, np.ndarray] = {}
    if table is None or len(table) == 0:
        return out
    missing = {"method", "schedule", "sparsity", "image", column} - set(table.columns)
    if missing:
        raise ValueError(f"table for {column!r} lacks columns {sorted(missing)}")
    for (m, sch, s), g in table.groupby(["method", "schedule", "sparsity"]):
        img = g["image"].to_numpy()
        if img.size and (img.min() < 0 or img.max() >= n):
            raise ValueError(f"{column!r} table: images of ({m}, {sch}, {s}) outside 0..{n - 1}")
        arr = np.full(n, np.nan)
        arr[img] = g[column].to_numpy(dtype=float)
        out[PopKey(m, sch, round(float(s), 6))] = arr
    return out


def images_table(preds: dict[PopKey, np.ndarray], labels: np.ndarray, num_classes: int,
                 qscores: pd.DataFrame | None = None, depths: pd.DataFrame | None = None
                 ) -> pd.DataFrame:
    """``images.csv``: one row per (test image, configuration compared with its method's dense
    population), columns :data:`IMAGE_COLUMNS`; the one source of per-image numbers that the
    gallery (F9) and the claims read.

    Configurations: every key of ``preds`` (from :func:`population_predictions`) except 'dense'
    whose method has a dense population; this includes the noise floor (schedule 'floor').
    Shares are the fraction of a population's models voting for its modal label; ties are
    broken to the smallest class (as :func:`pcl.metrics.modal_labels`) and flagged. Q-Score and
    prediction depth are population means from :func:`qscore_table` ('qscore') and
    :func:`depth_table` ('depth'); NaN where not given or not computed (depth covers dense and
    the headline sparsity only).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (images,); got shape {labels.shape}")
    n = len(labels)
    for key, p in preds.items():
        if np.ndim(p) != 2 or np.shape(p)[1] != n or np.shape(p)[0] < 1:
            raise ValueError(f"predictions of {key} must be (models >= 1, {n} images); "
                             f"got shape {np.shape(p)}")
    q = _per_image(qscores, "qscore", n)
    d = _per_image(depths, "depth", n)
    nan = np.full(n, np.nan)

    def look(t: dict[PopKey, np.ndarray], key: PopKey) -> np.ndarray:
        return t.get(PopKey(key.method, key.schedule, round(float(key.sparsity), 6)), nan)

    frames = []
    for key in sorted(map(PopKey._make, preds), key=lambda k: (k.method, k.schedule, float(k.sparsity))):
        dk = PopKey.dense(key.method)
        if key.is_dense or dk not in preds:
            continue
        dense, pruned = np.asarray(preds[dk]), np.asarray(preds[key])
        dm, ds, dt = _votes(dense, num_classes)
        pm, ps, pt = _votes(pruned, num_classes)
        frames.append(pd.DataFrame({
            "method": key.method, "schedule": key.schedule, "sparsity": float(key.sparsity),
            "image": np.arange(n), "label": labels, "dense_modal": dm, "pruned_modal": pm,
            "dense_share": ds, "pruned_share": ps, "pie": dm != pm, "dense_ties": dt,
            "pruned_ties": pt, "qscore_dense": look(q, dk), "qscore_pruned": look(q, key),
            "depth_dense": look(d, dk), "depth_pruned": look(d, key), "models": len(pruned),
            "dense_models": len(dense)}))
    if not frames:
        return pd.DataFrame({c: [] for c in IMAGE_COLUMNS})
    return pd.concat(frames, ignore_index=True)[list(IMAGE_COLUMNS)]
