"""From finished runs to tidy tables: accuracy, PIEs, Q-Score, prediction depth; populations are
keyed by :class:`~pcl.keys.PopKey` (ARCHITECTURE.md, "The study's vocabulary"). Tables are built from
the runs' stored test logits and features and the k-NN probe predictions cached in their ``eval/``,
so nothing is ever retrained or re-evaluated."""
from __future__ import annotations

import hashlib
import pickle
import sys
from collections import defaultdict

import numpy as np
import pandas as pd
import torch

from . import __version__, knn, metrics, provenance, schedules
from .config import Preset, RunConfig, resolve_device
from .data import Dataset, load_for_config
from .keys import PopKey
from .models import WideResNet, eval_forward
from .store import RunStore, _atomic_write_bytes
from .study import plan
from .train import load_model


def population_key(preset: Preset, cfg: RunConfig) -> PopKey:
    """(method, schedule, sparsity); dense runs with seeds >= preset.seeds form the noise-floor
    population (method, 'floor', 0.0)."""
    sch = "floor" if cfg.pruning == "none" and cfg.seed >= preset.seeds else cfg.schedule
    return PopKey(cfg.method, sch, cfg.sparsity)


def populations(preset: Preset, store: RunStore | None = None) -> dict[PopKey, list[RunConfig]]:
    """Every population of the study, its configs ordered by seed (the noise floor's second dense
    population keyed (method, 'floor', 0.0)); with ``store``, only its finished runs."""
    out: dict[PopKey, list[RunConfig]] = defaultdict(list)
    for c in plan(preset):
        if store is None or store.is_done(c):
            out[population_key(preset, c)].append(c)
    return {k: sorted(v, key=lambda c: c.seed) for k, v in out.items()}


def run_table(preset: Preset, store: RunStore) -> pd.DataFrame:
    """One row per finished run: its keys, accuracy, measured sparsity, training time and provenance
    (:mod:`pcl.provenance`: logits hash, machine fingerprint; None without a machine record)."""
    rows = []
    for (m, sch, s), cfgs in populations(preset, store).items():
        for c in cfgs:
            h = store.load_history(c)
            rows.append({"method": m, "schedule": sch, "sparsity": s, "seed": c.seed,
                         "test_acc": h["test_acc"], "measured_sparsity": h["sparsity"],
                         "train_seconds": sum(e["seconds"] for e in h["epochs"]), "run": c.run_hash(),
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
        if key.is_dense or PopKey.dense(key.method) not in preds:
            continue
        dense = preds[PopKey.dense(key.method)]
        frames.append(pd.DataFrame({
            "method": key.method, "schedule": key.schedule, "sparsity": key.sparsity,
            "image": np.arange(len(labels)), "label": labels, "dense_modal": metrics.modal_labels(dense, k),
            "pruned_modal": metrics.modal_labels(pruned, k), "pie": metrics.pie_mask(dense, pruned, k),
            "models": len(pruned)}))
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


def tap_features(net: WideResNet, images: torch.Tensor, device: torch.device,
                 batch_size: int | None = None) -> list[torch.Tensor]:
    """Pooled representation at every probe tap, for all ``images`` (list over taps, on CPU)."""
    return eval_forward(net, images, device, net.forward_taps, batch_size)


def probe_predictions(cfg: RunConfig, store: RunStore, data: Dataset, k: int = 30,
                      train_images: int | None = None, device=None) -> np.ndarray:
    """(taps, test images) k-NN predictions at every tap, fitted on the training split; computed
    once and stored in the run folder as ``eval/probes-k{k}-n{train_images}.pt``."""
    device = resolve_device(device)
    n = len(data.train) if train_images is None else min(train_images, len(data.train))

    def compute() -> np.ndarray:
        net = load_model(cfg, store, device).to(memory_format=torch.channels_last)
        idx = torch.linspace(0, len(data.train) - 1, n).long()  # deterministic, class-mixed
        tr, te = (tap_features(net, x, device) for x in (data.train.images[idx], data.test.images))
        return knn.knn_predict_many(tr, data.train.labels[idx], te, k=k, num_classes=cfg.num_classes,
                                    device=device).astype(np.int16)

    return np.asarray(store.artifact(cfg, f"probes-k{k}-n{n}", compute))


def depth_populations(preset: Preset, store: RunStore) -> dict[PopKey, list[RunConfig]]:
    """The populations prediction depth is measured on: dense and every schedule at the
    headline sparsity, ``pd_models`` models each."""
    return {k: v[:preset.pd_models] for k, v in populations(preset, store).items()
            if k.is_dense or k.sparsity == preset.headline_sparsity}


def depth_table(preset: Preset, store: RunStore, data: Dataset, device=None,
                progress: bool = True) -> pd.DataFrame:
    """One row per test image per population: mean prediction depth over ``pd_models`` models,
    against the network's own prediction ('depth') and against the true label ('depth_label')."""
    from tqdm import tqdm

    labels = data.test.labels.numpy()
    jobs = [(k, c) for k, cfgs in depth_populations(preset, store).items() for c in cfgs]
    per: dict[PopKey, list] = defaultdict(list)
    for key, c in tqdm(jobs, desc="prediction depth", disable=not progress, mininterval=30, file=sys.stdout):
        probes = probe_predictions(c, store, data, preset.knn_k, preset.pd_train_images, device)
        per[key].append((metrics.prediction_depth(probes, store.load_logits(c).argmax(1).numpy()),
                         metrics.prediction_depth(probes, labels)))
    return pd.concat([pd.DataFrame({
        "method": m, "schedule": sch, "sparsity": s, "image": np.arange(len(labels)),
        "label": labels, "depth": np.mean([v[0] for v in vals], 0),
        "depth_label": np.mean([v[1] for v in vals], 0), "models": len(vals),
        "taps": probes.shape[0]}) for (m, sch, s), vals in per.items()], ignore_index=True)


def onset_begins(preset: Preset) -> dict[str, float]:
    """Schedule label -> GMP begin of every point of the onset curve: exactly the runs the
    preset's sweep plans, and the schedules it declares points (``onset_points_from``)."""
    m = preset.methods[0]
    cfgs = [preset.run(m, 0, n, preset.onset_sparsity) for n in preset.onset_points_from]
    sweep = [c for s in schedules.SCHEDULES if s.sweep for c in s.configs(preset, m, 0)]
    return {c.schedule: c.gmp_window[0] for c in cfgs + sweep}


def onset_table(runs: pd.DataFrame, counts: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """The pruning-onset curve at ``onset_sparsity`` over :func:`onset_begins`' points: one row per
    (method, begin), its mean accuracy and PIE count (with the interval when ``counts`` has one)."""
    s = preset.onset_sparsity
    acc = runs[runs.sparsity == s].groupby(["method", "schedule"], as_index=False).test_acc.mean()
    d = acc.merge(counts[counts.sparsity == s], on=["method", "schedule"])
    begins = onset_begins(preset)
    d = d[d.schedule.isin(begins)].assign(begin=lambda x: x.schedule.map(begins))
    cols = ["method", "schedule", "begin", "sparsity", "pies"]
    cols += [c for c in ("ci_low", "ci_high") if c in d] + ["test_acc"]
    return d[cols].sort_values(["method", "begin"], ignore_index=True)


def study_data(preset: Preset, data_root: str | None = None) -> Dataset:
    """The (subset) dataset every run of ``preset`` uses."""
    return load_for_config(preset.ce, data_root)


def umap_subset(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed random subset of ``size`` of ``n`` test images (sorted indices)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


def umap_of_run(cfg: RunConfig, store: RunStore, idx: np.ndarray, random_state: int = 0) -> np.ndarray:
    """2-D UMAP of one run's test features on images ``idx``; stored in the run folder."""
    digest = hashlib.sha256(np.ascontiguousarray(idx, dtype=np.int64).tobytes()).hexdigest()[:10]
    key = f"umap-n{len(idx)}-{digest}-rs{random_state}"
    embed = lambda: metrics.umap_embedding(store.load_features(cfg).numpy()[idx], random_state=random_state)
    return np.asarray(store.artifact(cfg, key, embed))


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
    """One of the study's tidy tables (:data:`TABLES`), cached in ``<store>/.tables/`` under the
    finished runs it is built from, so notebooks 04-09 share it and it is rebuilt as soon as another
    run finishes. ``data`` (the study's dataset) is loaded from ``data_root`` when needed."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; allowed: {', '.join(map(repr, TABLES))}")
    path = store.root / ".tables" / f"{preset.name}-{name}-{_table_fingerprint(preset, store, name)}.pkl"
    if path.exists():
        return pd.read_pickle(path)
    if name != "runs" and data is None:
        data = study_data(preset, data_root)
    table = {"runs": lambda: run_table(preset, store),
             "pies": lambda: pie_table(preset, store, data.test.labels.numpy()),
             "qscores": lambda: qscore_table(preset, store, data.test.labels.numpy()),
             "depths": lambda: depth_table(preset, store, data, progress=progress)}[name]()
    _atomic_write_bytes(pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL), path)
    for old in set(path.parent.glob(f"{preset.name}-{name}-*.pkl")) - {path}:  # superseded versions
        old.unlink(missing_ok=True)
    return table


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
    """``table[column]`` as a length-``n`` array per population key, NaN where an image has no row."""
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
                 qscores: pd.DataFrame | None = None, depths: pd.DataFrame | None = None) -> pd.DataFrame:
    """``images.csv``: one row per (test image, configuration compared with its method's dense
    population), columns :data:`IMAGE_COLUMNS`; the one source of per-image numbers that the
    gallery (F9) and the claims read. Configurations: every key of ``preds`` but 'dense' whose
    method has a dense population, the noise floor included. Shares: the fraction of models voting
    for the modal label (ties broken to the smallest class, and flagged). Q-Score and depth: the
    population means of :func:`qscore_table` and :func:`depth_table`, NaN where not computed (depth:
    dense and the headline sparsity only)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (images,); got shape {labels.shape}")
    n = len(labels)
    for key, p in preds.items():
        if np.ndim(p) != 2 or np.shape(p)[1] != n or np.shape(p)[0] < 1:
            raise ValueError(f"predictions of {key} must be (models >= 1, {n} images); "
                             f"got shape {np.shape(p)}")
    q, d = _per_image(qscores, "qscore", n), _per_image(depths, "depth", n)
    nan = np.full(n, np.nan)
    look = lambda t, key: t.get(PopKey(key.method, key.schedule, round(float(key.sparsity), 6)), nan)
    frames = []
    for key in sorted(map(PopKey._make, preds), key=lambda k: (k.method, k.schedule, float(k.sparsity))):
        dk = PopKey.dense(key.method)
        if key.is_dense or dk not in preds:
            continue
        dense, pruned = np.asarray(preds[dk]), np.asarray(preds[key])
        (dm, ds, dt), (pm, ps, pt) = _votes(dense, num_classes), _votes(pruned, num_classes)
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
