"""From finished runs to tidy tables: accuracy, PIEs, Q-Score, prediction depth.

Every run stores its test logits and penultimate features when it finishes; prediction depth's
k-NN probe predictions are computed once per run and stored in the run folder (``eval/``), so a
table is rebuilt from disk in seconds and nothing is ever retrained or re-evaluated.
Populations are keyed by (method, schedule, sparsity); ``schedule`` is a config's
:attr:`~pcl.config.RunConfig.schedule` label ('dense', 'gmp_early', 'gmp_late', 'oneshot' or
'gmp@0.30-0.54' for the onset sweep).
"""
from __future__ import annotations

import hashlib
import sys
from collections import defaultdict

import numpy as np
import pandas as pd
import torch

from . import augment, metrics
from .config import Preset, RunConfig
from .data import Dataset, load_for_config
from .models import WideResNet
from .store import RunStore
from .study import plan
from .train import channels_last, default_device, load_model

Key = tuple  # (method, schedule, sparsity)


def populations(preset: Preset, store: RunStore | None = None) -> dict[Key, list[RunConfig]]:
    """Every population of the study, its configs ordered by seed.

    With ``store``, only finished runs are kept (and empty populations dropped).
    """
    out: dict[Key, list[RunConfig]] = defaultdict(list)
    for c in plan(preset):
        if store is None or store.is_done(c):
            out[(c.method, c.schedule, c.sparsity)].append(c)
    return {k: sorted(v, key=lambda c: c.seed) for k, v in out.items() if v}


def _dense_key(key: Key) -> Key:
    return (key[0], "dense", 0.0)


def run_table(preset: Preset, store: RunStore) -> pd.DataFrame:
    """One row per finished run: method, schedule, sparsity, seed, accuracy, measured sparsity."""
    rows = []
    for (m, sch, s), cfgs in populations(preset, store).items():
        for c in cfgs:
            h = store.load_history(c)
            secs = sum(e["seconds"] for e in h["epochs"])
            rows.append({"method": m, "schedule": sch, "sparsity": s, "seed": c.seed,
                         "test_acc": h["test_acc"], "measured_sparsity": h["sparsity"],
                         "train_seconds": secs, "run": c.run_hash()})
    return pd.DataFrame(rows)


def predictions(store: RunStore, cfgs: list[RunConfig]) -> np.ndarray:
    """(models, images) predicted classes of a population."""
    return np.stack([store.load_logits(c).argmax(1).numpy() for c in cfgs])


def population_predictions(preset: Preset, store: RunStore) -> dict[Key, np.ndarray]:
    """(models, images) predictions of every finished population, loaded once."""
    return {key: predictions(store, cfgs) for key, cfgs in populations(preset, store).items()}


def pie_table(preset: Preset, store: RunStore, labels: np.ndarray) -> pd.DataFrame:
    """One row per test image per pruned population: modal labels, true label, PIE flag."""
    preds = population_predictions(preset, store)
    k = preset.ce.num_classes
    frames = []
    for key, pruned in preds.items():
        if key[1] == "dense" or _dense_key(key) not in preds:
            continue
        dense = preds[_dense_key(key)]
        frames.append(pd.DataFrame({
            "method": key[0], "schedule": key[1], "sparsity": key[2], "image": np.arange(len(labels)),
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
@torch.no_grad()
def tap_features(net: WideResNet, images: torch.Tensor, device: torch.device,
                 batch_size: int = 1000) -> list[torch.Tensor]:
    """Pooled representation at every probe tap, for all ``images`` (list over taps, on CPU)."""
    net.eval()
    chunks: list[list[torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        x = channels_last(augment.eval_transform(images[i:i + batch_size].to(device)))
        chunks.append([t.float().cpu() for t in net.forward_taps(x)])
    return [torch.cat(parts) for parts in zip(*chunks)]


def probe_predictions(cfg: RunConfig, store: RunStore, data: Dataset, k: int = 30,
                      train_images: int | None = None, device=None) -> np.ndarray:
    """(taps, test images) k-NN predictions at every tap, fitted on the training split.

    Stored in the run folder as ``eval/probes-k{k}-n{train_images}.pt``; computed once.
    """
    device = torch.device(device) if device is not None else default_device()
    n = len(data.train) if train_images is None else min(train_images, len(data.train))

    def compute() -> np.ndarray:
        net = load_model(cfg, store, device).to(memory_format=torch.channels_last)
        idx = torch.linspace(0, len(data.train) - 1, n).long()  # deterministic, class-mixed
        tr = tap_features(net, data.train.images[idx], device)
        te = tap_features(net, data.test.images, device)
        ytr = data.train.labels[idx]
        preds = metrics.knn_predict_many(tr, ytr, te, k=k, num_classes=cfg.num_classes, device=device)
        return preds.astype(np.int16)

    return np.asarray(store.artifact(cfg, f"probes-k{k}-n{n}", compute))


def depth_populations(preset: Preset, store: RunStore) -> dict[Key, list[RunConfig]]:
    """The populations prediction depth is measured on: dense and every schedule at the
    headline sparsity, ``pd_models`` models each."""
    pops = populations(preset, store)
    return {k: v[:preset.pd_models] for k, v in pops.items()
            if k[1] == "dense" or k[2] == preset.headline_sparsity}


def depth_table(preset: Preset, store: RunStore, data: Dataset, device=None,
                progress: bool = True) -> pd.DataFrame:
    """One row per test image per population: mean prediction depth over ``pd_models`` models,
    against the network's own prediction ('depth') and against the true label ('depth_label')."""
    from tqdm import tqdm

    labels = data.test.labels.numpy()
    pops = depth_populations(preset, store)
    jobs = [(k, c) for k, cfgs in pops.items() for c in cfgs]
    per: dict[Key, list] = defaultdict(list)
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


def onset_table(runs: pd.DataFrame, counts: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """The pruning-onset curve at ``onset_sparsity``: one row per (method, begin) with the mean
    accuracy and the PIE count; gmp_early (same duration) is the earliest point."""
    s = preset.onset_sparsity
    acc = runs[runs.sparsity == s].groupby(["method", "schedule"], as_index=False).test_acc.mean()
    d = acc.merge(counts[counts.sparsity == s], on=["method", "schedule"])
    begins = {f"gmp@{b:.2f}-{min(1.0, b + preset.onset_duration):.2f}": b for b in preset.onset_begins}
    begins["gmp_early"] = 0.0125
    d = d[d.schedule.isin(begins)].assign(begin=lambda x: x.schedule.map(begins))
    return d[["method", "schedule", "begin", "sparsity", "pies", "test_acc"]].sort_values(
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
