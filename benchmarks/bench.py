"""Benchmarks of the pcl pipeline against the original-style code it replaces and the fastest
references available.

What is measured (all in one process, on one device, same random data for every path):

1. ``train`` -- training throughput of WRN-16-2 in images per second, for cross-entropy (one
   view per image) and SupCon (two views per image; images are counted, not views), three paths:

   * **pcl bf16** and **pcl fp32**: the uint8 training tensor lives on the device; each batch is
     augmented as a whole with per-image random parameters (``pcl.augment``), model and input are
     channels_last; the per-batch loss is built by ``pcl.methods.ce_loss_fn`` /
     ``supcon_loss_fn`` -- exactly what ``pcl.train.fit`` runs -- under bf16 autocast or in fp32
     (``RunConfig.precision``), with SGD (momentum 0.9). bf16 is measured only where the device
     computes it natively (``pcl.config.native_bf16``: CUDA, or CPUs with avx512_bf16 / AMX).
   * **baseline**: the original authors' style -- a ``torch.utils.data.Dataset`` over a uint8
     HWC numpy array returning PIL images through ``torchvision.transforms`` one image at a time
     (SupCon: a ``TwoCropTransform``), a shuffling ``DataLoader``, fp32, default NCHW layout,
     the same model, loss and optimiser.

   Warm-up steps are run first and excluded; then ``--steps`` steps are timed. The target (CPU):
   pcl at the precision a preset would train with (bf16 where native, else fp32) >= 1.3x the
   baseline, both ratios from this one run.

2. ``knn`` -- ``pcl.knn.knn_predict`` (k=30, exact) against the exact CPU references:
   faiss-cpu's ``IndexFlatL2`` (when installed: ``pip install -e '.[bench]'``) and scikit-learn's
   ``KNeighborsClassifier(algorithm='brute')``, each fit + predict (faiss: index + search +
   the same majority vote), on Gaussian-blob float32 features of dimension 128, 10 classes.
   ``speedup`` = fastest reference's seconds / pcl's; the target is >= 1.0x. ``agreement`` is
   the fraction of identical predictions (pcl is exact, so anything below 1.0 is the reference's
   float32 rounding at a near-tie). scikit-learn also runs once with ``n_jobs=-1`` on all cores.

3. ``eval`` -- evaluation forward passes of one WRN-16-2 (fp32, channels_last, eval mode) at
   several batch sizes: the probe-tap forward (``pcl.evaluate.tap_features``, prediction depth)
   and the plain forward (``pcl.train.predict``: logits and penultimate features). Prints the
   fastest batch size of each.

4. ``pd`` -- the cost of prediction depth for one model: ``tap_features`` on the train and test
   images plus ``pcl.knn.knn_predict_many`` (k=30) over all probe taps, for a randomly
   initialised WRN-16-2 (timing does not depend on the weights).

Clock: on CPU with one thread, seconds are the process's CPU time (``time.process_time``): every
path runs single-threaded in this process, so this is the work each path costs, unaffected by
other load on a shared machine (the wall-clock seconds are in the JSON too). Otherwise (CUDA, or
several threads) wall-clock time, after ``torch.cuda.synchronize`` on CUDA.

Numbers from ``--quick`` are a smoke check of the script, not measurements. Results are printed
and written as JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pcl import knn
from pcl.config import native_bf16
from pcl.data import MEAN, STD
from pcl.evaluate import tap_features
from pcl.losses import supcon_loss
from pcl.methods import ce_loss_fn, supcon_loss_fn
from pcl.models import SupConNet, wide_resnet
from pcl.train import predict

SECTIONS = ("train", "knn", "eval", "pd")
METHODS = ("ce", "supcon")
TRAIN_TARGET = 1.3
KNN_TARGET = 1.0  # vs the fastest exact CPU reference
K = 30
TEMPERATURE, BASE_TEMPERATURE = 0.5, 0.07
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
NUM_CLASSES, KNN_DIM = 10, 128
EVAL_BATCHES = (100, 250, 500, 1000)
THREADS_NOTE = ("on the project's 2-core dev machine one thread per process was the fastest "
                "setting measured")


# ------------------------------------------------------------------------------------------------
# small utilities
# ------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """CPU time of this process when everything runs single-threaded on the CPU (see the module
    docstring), else wall-clock time; ``wall`` is always kept too."""

    def __init__(self, device: torch.device, threads: int) -> None:
        self.device = device
        self.cpu = device.type == "cpu" and threads == 1
        self.name = "process CPU time" if self.cpu else "wall-clock time"

    def __call__(self) -> float:
        sync(self.device)
        return time.process_time() if self.cpu else time.perf_counter()

    def time(self, fn: Callable[[], Any]) -> tuple[Any, float, float]:
        """(result, seconds by this clock, wall seconds) of one call of ``fn``."""
        w0, t0 = time.perf_counter(), self()
        out = fn()
        t1 = self()
        return out, t1 - t0, time.perf_counter() - w0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


def random_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 HWC 32x32 RGB images and int64 labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=n, dtype=np.int64)
    return images, labels


def to_nchw_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 HWC numpy -> uint8 (N, 3, H, W) contiguous tensor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def build_model(method: str, device: torch.device, channels_last: bool, seed: int = 0) -> nn.Module:
    """WRN-16-2 (CE) or SupConNet over WRN-16-2 (SupCon), same init for a given seed."""
    torch.manual_seed(seed)
    model: nn.Module = wide_resnet(16, 2, NUM_CLASSES) if method == "ce" else SupConNet(
        16, 2, NUM_CLASSES, 128)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def make_sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def sgd_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_steps(step: Callable[[], None], warmup: int, steps: int, clock: Clock) -> tuple[float, float]:
    """(seconds, wall seconds) for ``steps`` calls of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _, t, wall = clock.time(lambda: [step() for _ in range(steps)])
    return t, wall


# ------------------------------------------------------------------------------------------------
# 1. training throughput
# ------------------------------------------------------------------------------------------------
def pcl_step_fn(method: str, images: torch.Tensor, labels: torch.Tensor, batch: int,
                device: torch.device, vflip: bool, precision: str) -> Callable[[], None]:
    """One optimiser step as in ``pcl.train.fit``: device-side batch and augmentation."""
    model = build_model(method, device, channels_last=True)
    if isinstance(model, SupConNet):
        loss_fn = supcon_loss_fn(model, device, TEMPERATURE, BASE_TEMPERATURE, precision)
    else:
        loss_fn = ce_loss_fn(model, device, vflip, precision)
    opt = make_sgd(model)
    x_dev, y_dev = images.to(device), labels.to(device)
    gen = torch.Generator(device=device).manual_seed(1)
    perm = torch.randperm(len(y_dev), generator=torch.Generator().manual_seed(2)).to(device)
    state = {"i": 0}

    def step() -> None:
        i = state["i"]
        idx = perm[i * batch:(i + 1) * batch]
        state["i"] = i + 1
        sgd_step(opt, loss_fn(x_dev[idx], y_dev[idx], gen))
    return step


class TwoCropTransform:
    """Two independent views of one image (as in the SupCon reference code)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, x: Any) -> list:
        return [self.transform(x), self.transform(x)]


class NumpyImages(Dataset):
    """A uint8 HWC numpy array served as PIL images through a torchvision transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline_transform(method: str) -> Callable:
    normalize = T.Normalize(MEAN, STD)
    if method == "ce":
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                          normalize])
    view = T.Compose([
        T.RandomResizedCrop(32, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToTensor(),
        normalize,
    ])
    return TwoCropTransform(view)


def baseline_step_fn(method: str, images: np.ndarray, labels: np.ndarray, batch: int,
                     device: torch.device, workers: int) -> Callable[[], None]:
    """One optimiser step of the original-style loop: DataLoader + PIL transforms, fp32, NCHW."""
    model = build_model(method, device, channels_last=False)
    opt = make_sgd(model)
    loader = DataLoader(NumpyImages(images, labels, baseline_transform(method)), batch_size=batch,
                        shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(3))
    it: Iterator = iter(loader)

    def step() -> None:
        x, y = next(it)
        y = y.to(device, non_blocking=True)
        if method == "ce":
            loss = F.cross_entropy(model(x.to(device, non_blocking=True)), y)
        else:
            assert isinstance(model, SupConNet)
            b = y.shape[0]
            z = model.project(torch.cat(x, 0).to(device, non_blocking=True))
            loss = supcon_loss(torch.stack([z[:b], z[b:]], 1), y, TEMPERATURE, BASE_TEMPERATURE)
        sgd_step(opt, loss)
    return step


@dataclass
class TrainResult:
    """One method's throughput: pcl in fp32 and (where native) bf16, and the baseline."""

    method: str
    batch: int
    steps: int
    warmup: int
    pcl_fp32_img_s: float
    pcl_bf16_img_s: float | None
    baseline_img_s: float
    ratio: float  # pcl at the preset's precision / baseline
    ratio_fp32: float
    bf16_over_fp32: float | None
    precision: str  # what a preset trains with here: bf16 where native, else fp32
    target: float
    met: bool | None
    wall_seconds: dict = field(default_factory=dict)

    @property
    def pcl_img_s(self) -> float:
        return self.pcl_bf16_img_s if self.precision == "bf16" else self.pcl_fp32_img_s


def bench_train(method: str, batch: int, steps: int, warmup: int, device: torch.device,
                workers: int, vflip: bool, clock: Clock, bf16: bool) -> TrainResult:
    n = batch * (steps + warmup)
    images, labels = random_images(n, seed=0)
    images_t, labels_t = to_nchw_tensor(images), torch.from_numpy(labels)
    secs, wall = {}, {}
    paths: dict[str, Callable[[], Callable[[], None]]] = {
        "pcl_fp32": lambda: pcl_step_fn(method, images_t, labels_t, batch, device, vflip, "fp32"),
        "baseline": lambda: baseline_step_fn(method, images, labels, batch, device, workers),
    }
    if bf16:
        paths["pcl_bf16"] = lambda: pcl_step_fn(method, images_t, labels_t, batch, device, vflip,
                                                "bf16")
    for name, make in paths.items():
        secs[name], wall[name] = time_steps(make(), warmup, steps, clock)
    ips = {k: batch * steps / v for k, v in secs.items()}
    precision = "bf16" if bf16 else "fp32"
    pcl = ips["pcl_bf16"] if bf16 else ips["pcl_fp32"]
    ratio = pcl / ips["baseline"]
    met = ratio >= TRAIN_TARGET if device.type == "cpu" else None
    return TrainResult(method, batch, steps, warmup, ips["pcl_fp32"], ips.get("pcl_bf16"),
                       ips["baseline"], ratio, ips["pcl_fp32"] / ips["baseline"],
                       ips["pcl_bf16"] / ips["pcl_fp32"] if bf16 else None, precision,
                       TRAIN_TARGET, met, wall)


# ------------------------------------------------------------------------------------------------
# 2. k-NN
# ------------------------------------------------------------------------------------------------
def blob_features(n_train: int, n_test: int, dim: int = KNN_DIM,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping Gaussian class blobs (float32): train features, train labels, test features."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((NUM_CLASSES, dim)).astype(np.float32) * 0.3
    y = rng.integers(0, NUM_CLASSES, size=n_train + n_test)
    x = centers[y] + rng.standard_normal((n_train + n_test, dim)).astype(np.float32)
    return x[:n_train], y[:n_train].astype(np.int64), x[n_train:]


def majority_vote(neighbour_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Most frequent label per row; ties to the smallest class (as scikit-learn and pcl)."""
    n = neighbour_labels.shape[0]
    offset = neighbour_labels + (np.arange(n) * num_classes)[:, None]
    counts = np.bincount(offset.ravel(), minlength=n * num_classes).reshape(n, num_classes)
    return counts.argmax(1)


def faiss_knn(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, threads: int) -> np.ndarray:
    """faiss-cpu's exact search (``IndexFlatL2``) + the majority vote."""
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatL2(xtr.shape[1])
    index.add(np.ascontiguousarray(xtr, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(xte, dtype=np.float32), K)
    return majority_vote(ytr[idx], NUM_CLASSES)


def sklearn_knn(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, n_jobs: int) -> np.ndarray:
    """Fit + predict of scikit-learn's brute-force k-NN."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=K, algorithm="brute", n_jobs=n_jobs)
    return np.asarray(clf.fit(xtr, ytr).predict(xte))


def have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def bench_knn(n_train: int, n_test: int, device: torch.device, threads: int, clock: Clock,
              parallel: bool) -> dict:
    from threadpoolctl import threadpool_limits

    xtr, ytr, xte = blob_features(n_train, n_test)
    paths: dict[str, Callable] = {
        "pcl": lambda a, b, c: knn.knn_predict(a, b, c, k=K, num_classes=NUM_CLASSES,
                                                   device=device),
        "sklearn": lambda a, b, c: sklearn_knn(a, b, c, 1),
    }
    if have_faiss():
        paths["faiss"] = lambda a, b, c: faiss_knn(a, b, c, threads)
    preds, secs, wall = {}, {}, {}
    with threadpool_limits(limits=threads):
        warm = min(n_train, 4 * K)  # CUDA context, lazy imports, BLAS pools: not timed
        for fn in paths.values():
            fn(xtr[:warm], ytr[:warm], xte[:8])
        for name, fn in paths.items():
            preds[name], secs[name], wall[name] = clock.time(lambda fn=fn: fn(xtr, ytr, xte))
    refs = [r for r in ("faiss", "sklearn") if r in secs]
    fastest = min(refs, key=lambda r: secs[r])
    out = {"n_train": n_train, "n_test": n_test, "dim": KNN_DIM, "k": K, "threads": threads,
           "seconds": secs, "wall_seconds": wall, "reference": fastest,
           "speedup": secs[fastest] / secs["pcl"], "target": KNN_TARGET,
           "met": secs[fastest] / secs["pcl"] >= KNN_TARGET if device.type == "cpu" else None,
           "agreement": {r: float((preds["pcl"] == preds[r]).mean()) for r in refs},
           "faiss": have_faiss()}
    if parallel:
        t0 = time.perf_counter()
        pred_par = sklearn_knn(xtr, ytr, xte, -1)
        t_par = time.perf_counter() - t0
        out.update(sklearn_parallel_wall_seconds=t_par,
                   agreement_parallel=float((preds["pcl"] == pred_par).mean()))
    return out


# ------------------------------------------------------------------------------------------------
# 3. evaluation batch size
# ------------------------------------------------------------------------------------------------
def bench_eval(n_images: int, batches: tuple[int, ...], device: torch.device, clock: Clock) -> dict:
    """Images/s of the probe-tap and the plain forward of one WRN-16-2 at each batch size."""
    torch.manual_seed(0)
    net = wide_resnet(16, 2, NUM_CLASSES).to(device).to(memory_format=torch.channels_last).eval()
    images = to_nchw_tensor(random_images(n_images, seed=3)[0])
    forwards: dict[str, Callable[[int], Any]] = {
        "taps": lambda bs: tap_features(net, images, device, batch_size=bs),
        "plain": lambda bs: predict(net, images, device, batch_size=bs),
    }
    tap_features(net, images[:8], device, batch_size=8)  # warm-up
    rows = []
    for bs in batches:
        for name, fn in forwards.items():
            _, t, wall = clock.time(lambda fn=fn, bs=bs: fn(bs))
            rows.append({"forward": name, "batch": bs, "seconds": t, "wall_seconds": wall,
                         "img_s": n_images / t})
    best = {f: max((r for r in rows if r["forward"] == f), key=lambda r: r["img_s"])["batch"]
            for f in forwards}
    ref = max(batches)
    for r in rows:
        same = next(x for x in rows if x["forward"] == r["forward"] and x["batch"] == ref)
        r["speed_vs_batch_%d" % ref] = r["img_s"] / same["img_s"]
    ratio = {bs: next(r["seconds"] for r in rows if r["forward"] == "taps" and r["batch"] == bs)
             / next(r["seconds"] for r in rows if r["forward"] == "plain" and r["batch"] == bs)
             for bs in batches}
    return {"n_images": n_images, "rows": rows, "best_batch": best, "taps_over_plain": ratio}


# ------------------------------------------------------------------------------------------------
# 4. prediction depth
# ------------------------------------------------------------------------------------------------
def bench_pd(n_train: int, n_test: int, device: torch.device, clock: Clock,
             batch_size: int) -> dict:
    """Seconds of tap features (train, test) + k-NN over every tap for one WRN-16-2."""
    torch.manual_seed(0)
    net = wide_resnet(16, 2, NUM_CLASSES).to(device).to(memory_format=torch.channels_last)
    tr_np, ytr = random_images(n_train, seed=1)
    te_np, _ = random_images(n_test, seed=2)
    tr, te = to_nchw_tensor(tr_np), to_nchw_tensor(te_np)
    tap_features(net, te[:8], device)  # warm-up
    f_tr, t_tr, _ = clock.time(lambda: tap_features(net, tr, device, batch_size=batch_size))
    f_te, t_te, _ = clock.time(lambda: tap_features(net, te, device, batch_size=batch_size))
    preds, t_knn, _ = clock.time(lambda: knn.knn_predict_many(
        f_tr, ytr, f_te, k=K, num_classes=NUM_CLASSES, device=device))
    return {"n_train": n_train, "n_test": n_test, "k": K, "taps": len(f_tr), "batch": batch_size,
            "tap_dims": [int(f.shape[1]) for f in f_tr], "pred_shape": list(preds.shape),
            "features_train_seconds": t_tr, "features_test_seconds": t_te,
            "knn_seconds": t_knn, "total_seconds": t_tr + t_te + t_knn}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def _met(flag: bool | None) -> str:
    return "n/a (target is for CPU)" if flag is None else ("met" if flag else "NOT met")


def _f(x: float | None, spec: str = ".1f", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def print_train(rows: list[TrainResult]) -> None:
    print(f"\n{'method':<7} {'batch':>5} {'pcl bf16':>9} {'pcl fp32':>9} {'baseline':>9} "
          f"{'bf16/base':>9} {'fp32/base':>9} {'bf16/fp32':>9}  target (img/s)")
    for r in rows:
        bf16_base = r.pcl_bf16_img_s / r.baseline_img_s if r.pcl_bf16_img_s else None
        print(f"{r.method:<7} {r.batch:>5} {_f(r.pcl_bf16_img_s):>9} {r.pcl_fp32_img_s:>9.1f} "
              f"{r.baseline_img_s:>9.1f} {_f(bf16_base, '.2f') + 'x':>9} "
              f"{r.ratio_fp32:>8.2f}x {_f(r.bf16_over_fp32, '.2f') + 'x':>9}  "
              f"pcl ({r.precision}) >= {r.target:.1f}x baseline: {_met(r.met)}")
    print("  (SupCon counts images, not views: each image is augmented twice. bf16: autocast, "
          "measured only where native.)")


def print_knn(r: dict) -> None:
    s = r["seconds"]
    print(f"\nk-NN (k={r['k']}) {r['n_train']} train x {r['n_test']} test, dim {r['dim']}, "
          f"{r['threads']} thread(s) each:")
    print(f"  pcl.knn.knn_predict (exact)        {s['pcl']:8.3f} s")
    if "faiss" in s:
        print(f"  faiss IndexFlatL2 (exact) + vote       {s['faiss']:8.3f} s   "
              f"pcl speed-up {s['faiss'] / s['pcl']:.2f}x   agreement {r['agreement']['faiss']:.4f}")
    else:
        print("  faiss-cpu not installed (pip install -e '.[bench]'): not compared")
    print(f"  sklearn brute, n_jobs=1                {s['sklearn']:8.3f} s   "
          f"pcl speed-up {s['sklearn'] / s['pcl']:.2f}x   agreement {r['agreement']['sklearn']:.4f}")
    if "sklearn_parallel_wall_seconds" in r:
        print(f"  sklearn brute, n_jobs=-1, all cores    {r['sklearn_parallel_wall_seconds']:8.3f} s "
              f"wall")
    print(f"  vs the fastest exact reference ({r['reference']}): {r['speedup']:.2f}x "
          f"(target >= {r['target']:.1f}x: {_met(r['met'])})")


def print_eval(r: dict) -> None:
    ref = max(x["batch"] for x in r["rows"])
    print(f"\nevaluation forward, one WRN-16-2, {r['n_images']} images, fp32, channels_last:")
    print(f"  {'batch':>5} {'taps img/s':>11} {'plain img/s':>12} {'taps/plain s':>13} "
          f"{'taps vs ' + str(ref):>12} {'plain vs ' + str(ref):>13}")
    for bs, ratio in r["taps_over_plain"].items():
        t = next(x for x in r["rows"] if x["forward"] == "taps" and x["batch"] == bs)
        p = next(x for x in r["rows"] if x["forward"] == "plain" and x["batch"] == bs)
        key = "speed_vs_batch_%d" % ref
        print(f"  {bs:>5} {t['img_s']:>11.1f} {p['img_s']:>12.1f} {ratio:>12.2f}x "
              f"{t[key]:>11.2f}x {p[key]:>12.2f}x")
    print(f"  fastest batch: taps {r['best_batch']['taps']}, plain {r['best_batch']['plain']}")


def print_pd(r: dict) -> None:
    print(f"\nprediction depth, one WRN-16-2, {r['n_train']} train / {r['n_test']} test images, "
          f"{r['taps']} taps, k={r['k']}, batch {r['batch']}:")
    print(f"  tap features train {r['features_train_seconds']:.2f} s, "
          f"test {r['features_test_seconds']:.2f} s, k-NN over all taps {r['knn_seconds']:.2f} s; "
          f"total {r['total_seconds']:.2f} s per model")


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def parse_only(values: list[str] | None) -> list[str]:
    if not values:
        return list(SECTIONS)
    chosen = [v.strip() for item in values for v in item.split(",") if v.strip()]
    bad = sorted(set(chosen) - set(SECTIONS))
    if bad:
        raise SystemExit(f"--only: unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in chosen]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Throughput of pcl's training loop (bf16 and fp32) vs an original-style "
                    "DataLoader baseline, the exact k-NN vs faiss and scikit-learn, evaluation "
                    "batch sizes, and the per-model cost of prediction depth.")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke check (steps 2, warm-up 1, knn 2000x500, eval 200 "
                        "images, pd 1000x500); the numbers are not measurements")
    p.add_argument("--only", action="append", metavar="SECTION",
                   help="run only these sections: train, knn, eval, pd (repeatable or comma list)")
    p.add_argument("--device", default=None, help="cuda if available else cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads, and the thread cap of faiss, scikit-learn's "
                        "n_jobs=1 run and NumPy's BLAS (default 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CPU, 50 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 3)")
    p.add_argument("--ce-batch", type=int, default=128, help="CE batch size (images)")
    p.add_argument("--supcon-batch", type=int, default=128, help="SupCon batch size (images)")
    p.add_argument("--methods", default="ce,supcon", help="training methods to time (comma list)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 training rows")
    p.add_argument("--vflip", action="store_true",
                   help="pcl CE also flips vertically (off by default: matches the baseline)")
    p.add_argument("--baseline-workers", type=int, default=0,
                   help="DataLoader num_workers of the baseline (default 0)")
    p.add_argument("--knn-train", type=int, default=None, help="k-NN train points (default 50000)")
    p.add_argument("--knn-test", type=int, default=None, help="k-NN test points (default 10000)")
    p.add_argument("--no-sklearn-parallel", action="store_true",
                   help="skip the extra sklearn n_jobs=-1 timing")
    p.add_argument("--eval-images", type=int, default=None,
                   help="images per evaluation forward timing (default 5000)")
    p.add_argument("--eval-batches", default=",".join(map(str, EVAL_BATCHES)),
                   help="evaluation batch sizes (comma list; default 100,250,500,1000)")
    p.add_argument("--pd-train", type=int, default=None, help="PD train images (default 50000)")
    p.add_argument("--pd-test", type=int, default=None, help="PD test images (default 10000)")
    p.add_argument("--pd-batch", type=int, default=1000, help="PD tap-feature batch size")
    p.add_argument("--out", default="results/bench.json", help="JSON output path")
    return p


def resolve(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill unset sizes from --quick or the full-size defaults."""
    quick = {"steps": 2, "warmup": 1, "knn_train": 2000, "knn_test": 500, "eval_images": 200,
             "pd_train": 1000, "pd_test": 500}
    full = {"steps": 50 if device.type == "cuda" else 20, "warmup": 3, "knn_train": 50000,
            "knn_test": 10000, "eval_images": 5000, "pd_train": 50000, "pd_test": 10000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(args.methods) - set(METHODS))
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    try:
        args.eval_batches = tuple(int(b) for b in str(args.eval_batches).split(",") if b.strip())
    except ValueError:
        raise SystemExit(f"--eval-batches: a comma list of integers, got {args.eval_batches!r}") from None
    if not args.eval_batches or min(args.eval_batches) < 1:
        raise SystemExit(f"--eval-batches: positive integers, got {args.eval_batches}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args = resolve(args, device)
    sections = parse_only(args.only)
    torch.set_num_threads(args.threads)
    clock = Clock(device, args.threads)
    bf16 = native_bf16(str(device)) and not args.no_bf16

    import sklearn

    meta = {"device": str(device), "device_name": device_name(device),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "quick": args.quick,
            "clock": clock.name, "native_bf16": native_bf16(str(device)),
            "argv": sys.argv[1:] if argv is None else list(argv),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if have_faiss():
        import faiss

        meta["faiss"] = faiss.__version__
    print(f"pcl benchmark on {meta['device_name']} [{device}], torch {meta['torch']}, "
          f"torchvision {meta['torchvision']}, sklearn {meta['sklearn']}, "
          f"faiss {meta.get('faiss', 'not installed')}")
    print(f"threads: torch.set_num_threads({args.threads}) for every path ({THREADS_NOTE}); "
          f"seconds are {clock.name}")
    if args.quick:
        print("QUICK MODE: tiny sizes, a smoke check only -- these numbers are not measurements")
    results: dict[str, Any] = {"meta": meta}

    if "train" in sections:
        print(f"\n== training throughput, WRN-16-2, {args.warmup} warm-up + {args.steps} timed "
              f"steps; pcl: channels_last, on-device augmentation, fp32 and "
              f"{'bf16 autocast' if bf16 else '(no native bf16 here: bf16 not measured)'}; "
              f"baseline: fp32 NCHW, PIL transforms, DataLoader(num_workers={args.baseline_workers})")
        batches = {"ce": args.ce_batch, "supcon": args.supcon_batch}
        rows = []
        for m in args.methods:
            rows.append(bench_train(m, batches[m], args.steps, args.warmup, device,
                                    args.baseline_workers, args.vflip, clock, bf16))
            print(f"  {m}: done", flush=True)
        print_train(rows)
        results["train"] = {r.method: asdict(r) | {"pcl_img_s": r.pcl_img_s} for r in rows}

    if "knn" in sections:
        print(f"\n== k-NN: pcl (exact, {device}) vs the exact CPU references (faiss IndexFlatL2, "
              f"scikit-learn brute), fit + predict")
        results["knn"] = bench_knn(args.knn_train, args.knn_test, device, args.threads, clock,
                                   not args.no_sklearn_parallel)
        print_knn(results["knn"])

    if "eval" in sections:
        print(f"\n== evaluation batch size: probe-tap vs plain forward, batches {args.eval_batches}")
        results["eval"] = bench_eval(args.eval_images, args.eval_batches, device, clock)
        print_eval(results["eval"])

    if "pd" in sections:
        print("\n== prediction-depth cost per model")
        results["pd"] = bench_pd(args.pd_train, args.pd_test, device, clock, args.pd_batch)
        print_pd(results["pd"])

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
