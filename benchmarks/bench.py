"""Benchmarks of the pcl pipeline against the original-style code it replaces.

What is measured (all in one process, on one device, same random data for both sides):

1. ``train`` -- training throughput of WRN-16-2 in images per second, for cross-entropy (one
   view per image) and SupCon (two views per image; images are counted, not views).

   * **pcl**: the uint8 training tensor lives on the device; each batch is augmented as a whole
     with per-image random parameters (``pcl.augment``), model and input are channels_last,
     bf16 autocast on CUDA (fp32 on CPU); the per-batch loss is built by
     ``pcl.train.ce_loss_fn`` / ``pcl.train.supcon_loss_fn`` -- exactly what ``pcl.train.fit``
     runs -- with SGD (momentum 0.9).
   * **baseline**: the original authors' style -- a ``torch.utils.data.Dataset`` over a uint8
     HWC numpy array returning PIL images through ``torchvision.transforms`` one image at a time
     (SupCon: a ``TwoCropTransform``), a shuffling ``DataLoader``, fp32, default NCHW layout,
     the same model, loss and optimiser.

   A few warm-up steps are run first and excluded; then ``--steps`` steps are timed with
   ``time.perf_counter`` (after ``torch.cuda.synchronize`` on CUDA). Both sides use the same
   ``torch.set_num_threads(--threads)``. Read ``ratio`` = pcl img/s / baseline img/s; the target
   on CPU is >= 1.3x.

2. ``knn`` -- ``pcl.metrics.knn_predict`` (k=30) against scikit-learn's
   ``KNeighborsClassifier(n_neighbors=30, algorithm='brute')`` (fit + predict), on random
   Gaussian-blob float32 features of dimension 128, 10 classes. scikit-learn runs with
   ``n_jobs=1`` and its BLAS/OpenMP pools limited to ``--threads`` (same budget as torch), and
   once more with ``n_jobs=-1`` and no limit. ``speedup`` = sklearn(n_jobs=1) s / pcl s; the
   target on CPU is >= 10x. ``agreement`` is the fraction of identical predictions (it should be
   ~1.0; rare differences come from float rounding at the k-th-neighbour boundary).

3. ``pd`` -- the cost of prediction depth for one model: ``pcl.evaluate.tap_features`` on the
   train and test images plus ``pcl.metrics.knn_predict_many`` (k=30) over all probe taps, for a
   randomly initialised WRN-16-2 (timing does not depend on the weights).

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
from dataclasses import asdict, dataclass
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

from pcl import metrics
from pcl.data import MEAN, STD
from pcl.evaluate import tap_features
from pcl.losses import supcon_loss
from pcl.models import SupConNet, wide_resnet
from pcl.train import ce_loss_fn, supcon_loss_fn

SECTIONS = ("train", "knn", "pd")
METHODS = ("ce", "supcon")
TRAIN_TARGET = 1.3
KNN_TARGET = 10.0
K = 30
TEMPERATURE, BASE_TEMPERATURE = 0.5, 0.07
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
NUM_CLASSES, KNN_DIM = 10, 128
THREADS_NOTE = ("on the project's 2-core dev machine one thread per process was the fastest "
                "setting measured")


# ------------------------------------------------------------------------------------------------
# small utilities
# ------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def time_steps(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# 1. training throughput
# ------------------------------------------------------------------------------------------------
def pcl_step_fn(method: str, images: torch.Tensor, labels: torch.Tensor, batch: int,
                device: torch.device, vflip: bool) -> Callable[[], None]:
    """One optimiser step as in ``pcl.train.fit``: device-side batch and augmentation."""
    model = build_model(method, device, channels_last=True)
    if isinstance(model, SupConNet):
        loss_fn = supcon_loss_fn(model, device, TEMPERATURE, BASE_TEMPERATURE)
    else:
        loss_fn = ce_loss_fn(model, device, vflip)
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
    method: str
    batch: int
    steps: int
    warmup: int
    pcl_seconds: float
    baseline_seconds: float
    pcl_img_s: float
    baseline_img_s: float
    ratio: float
    target: float
    met: bool | None


def bench_train(method: str, batch: int, steps: int, warmup: int, device: torch.device,
                workers: int, vflip: bool) -> TrainResult:
    n = batch * (steps + warmup)
    images, labels = random_images(n, seed=0)
    images_t, labels_t = to_nchw_tensor(images), torch.from_numpy(labels)
    t_pcl = time_steps(pcl_step_fn(method, images_t, labels_t, batch, device, vflip),
                       warmup, steps, device)
    t_base = time_steps(baseline_step_fn(method, images, labels, batch, device, workers),
                        warmup, steps, device)
    pcl_ips, base_ips = batch * steps / t_pcl, batch * steps / t_base
    ratio = pcl_ips / base_ips
    met = ratio >= TRAIN_TARGET if device.type == "cpu" else None
    return TrainResult(method, batch, steps, warmup, t_pcl, t_base, pcl_ips, base_ips, ratio,
                       TRAIN_TARGET, met)


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


def sklearn_knn(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, n_jobs: int,
                threads: int) -> tuple[np.ndarray, float]:
    """Fit + predict of scikit-learn's brute-force k-NN; ``threads`` sets its BLAS/OpenMP pools."""
    from sklearn.neighbors import KNeighborsClassifier
    from threadpoolctl import threadpool_limits

    clf = KNeighborsClassifier(n_neighbors=K, algorithm="brute", n_jobs=n_jobs)
    with threadpool_limits(limits=threads):
        t0 = time.perf_counter()
        clf.fit(xtr, ytr)
        pred = clf.predict(xte)
        return np.asarray(pred), time.perf_counter() - t0


def pcl_knn(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
            device: torch.device) -> tuple[np.ndarray, float]:
    sync(device)
    t0 = time.perf_counter()
    pred = metrics.knn_predict(xtr, ytr, xte, k=K, num_classes=NUM_CLASSES, device=device)
    sync(device)
    return pred, time.perf_counter() - t0


def bench_knn(n_train: int, n_test: int, device: torch.device, threads: int,
              parallel: bool) -> dict:
    xtr, ytr, xte = blob_features(n_train, n_test)
    # warm-up (CUDA context, lazy imports, BLAS pools) on a small slice, not timed
    warm = min(n_train, 4 * K)
    pcl_knn(xtr[:warm], ytr[:warm], xte[:8], device)
    sklearn_knn(xtr[:warm], ytr[:warm], xte[:8], 1, threads)
    pred_pcl, t_pcl = pcl_knn(xtr, ytr, xte, device)
    pred_sk, t_sk = sklearn_knn(xtr, ytr, xte, 1, threads)
    out = {"n_train": n_train, "n_test": n_test, "dim": KNN_DIM, "k": K,
           "pcl_seconds": t_pcl, "sklearn_seconds": t_sk, "sklearn_threads": threads,
           "speedup": t_sk / t_pcl, "target": KNN_TARGET,
           "met": (t_sk / t_pcl >= KNN_TARGET) if device.type == "cpu" else None,
           "agreement": float((pred_pcl == pred_sk).mean())}
    if parallel:
        pred_par, t_par = sklearn_knn(xtr, ytr, xte, -1, os.cpu_count())
        out.update(sklearn_parallel_seconds=t_par, speedup_vs_parallel=t_par / t_pcl,
                   agreement_parallel=float((pred_pcl == pred_par).mean()))
    return out


# ------------------------------------------------------------------------------------------------
# 3. prediction depth
# ------------------------------------------------------------------------------------------------
def bench_pd(n_train: int, n_test: int, device: torch.device) -> dict:
    """Seconds of tap features (train, test) + k-NN over every tap for one WRN-16-2."""
    torch.manual_seed(0)
    net = wide_resnet(16, 2, NUM_CLASSES).to(device).to(memory_format=torch.channels_last)
    tr_np, ytr = random_images(n_train, seed=1)
    te_np, _ = random_images(n_test, seed=2)
    tr, te = to_nchw_tensor(tr_np), to_nchw_tensor(te_np)
    tap_features(net, te[:8], device)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    f_tr = tap_features(net, tr, device)
    t1 = time.perf_counter()
    f_te = tap_features(net, te, device)
    t2 = time.perf_counter()
    preds = metrics.knn_predict_many(f_tr, ytr, f_te, k=K, num_classes=NUM_CLASSES, device=device)
    sync(device)
    t3 = time.perf_counter()
    return {"n_train": n_train, "n_test": n_test, "k": K, "taps": len(f_tr),
            "tap_dims": [int(f.shape[1]) for f in f_tr], "pred_shape": list(preds.shape),
            "features_train_seconds": t1 - t0, "features_test_seconds": t2 - t1,
            "knn_seconds": t3 - t2, "total_seconds": t3 - t0}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def _met(flag: bool | None) -> str:
    return "n/a (target is for CPU)" if flag is None else ("met" if flag else "NOT met")


def print_train(rows: list[TrainResult]) -> None:
    print(f"\n{'method':<8} {'batch':>5} {'pcl img/s':>11} {'baseline img/s':>15} "
          f"{'pcl/baseline':>13}  target")
    for r in rows:
        print(f"{r.method:<8} {r.batch:>5} {r.pcl_img_s:>11.1f} {r.baseline_img_s:>15.1f} "
              f"{r.ratio:>12.2f}x  >= {r.target:.1f}x: {_met(r.met)}")
    print("  (SupCon counts images, not views: each image is augmented twice.)")


def print_knn(r: dict) -> None:
    print(f"\nk-NN (k={r['k']}) {r['n_train']} train x {r['n_test']} test, dim {r['dim']}:")
    print(f"  pcl.metrics.knn_predict              {r['pcl_seconds']:8.3f} s")
    print(f"  sklearn brute, n_jobs=1, {r['sklearn_threads']} thread(s) "
          f"{r['sklearn_seconds']:8.3f} s   speed-up {r['speedup']:.1f}x  "
          f"(target >= {r['target']:.0f}x: {_met(r['met'])})")
    if "sklearn_parallel_seconds" in r:
        print(f"  sklearn brute, n_jobs=-1, all cores  {r['sklearn_parallel_seconds']:8.3f} s   "
              f"speed-up {r['speedup_vs_parallel']:.1f}x")
    print(f"  prediction agreement pcl vs sklearn: {r['agreement']:.4f}")


def print_pd(r: dict) -> None:
    print(f"\nprediction depth, one WRN-16-2, {r['n_train']} train / {r['n_test']} test images, "
          f"{r['taps']} taps, k={r['k']}:")
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
        description="Throughput of pcl's training loop vs an original-style DataLoader baseline, "
                    "pcl k-NN vs scikit-learn, and the per-model cost of prediction depth.")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke check (steps 3, warm-up 1, knn 2000x500, "
                        "pd 1000x500); the numbers are not measurements")
    p.add_argument("--only", action="append", metavar="SECTION",
                   help="run only these sections: train, knn, pd (repeatable or comma list)")
    p.add_argument("--device", default=None, help="cuda if available else cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for both paths, and the thread cap of the "
                        "sklearn n_jobs=1 run (default 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CPU, 50 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 3)")
    p.add_argument("--ce-batch", type=int, default=128, help="CE batch size (images)")
    p.add_argument("--supcon-batch", type=int, default=128, help="SupCon batch size (images)")
    p.add_argument("--methods", default="ce,supcon", help="training methods to time (comma list)")
    p.add_argument("--vflip", action="store_true",
                   help="pcl CE also flips vertically (off by default: matches the baseline)")
    p.add_argument("--baseline-workers", type=int, default=0,
                   help="DataLoader num_workers of the baseline (default 0)")
    p.add_argument("--knn-train", type=int, default=None, help="k-NN train points (default 50000)")
    p.add_argument("--knn-test", type=int, default=None, help="k-NN test points (default 10000)")
    p.add_argument("--no-sklearn-parallel", action="store_true",
                   help="skip the extra sklearn n_jobs=-1 timing")
    p.add_argument("--pd-train", type=int, default=None, help="PD train images (default 50000)")
    p.add_argument("--pd-test", type=int, default=None, help="PD test images (default 10000)")
    p.add_argument("--out", default="results/bench.json", help="JSON output path")
    return p


def resolve(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill unset sizes from --quick or the full-size defaults."""
    quick = {"steps": 3, "warmup": 1, "knn_train": 2000, "knn_test": 500,
             "pd_train": 1000, "pd_test": 500}
    full = {"steps": 50 if device.type == "cuda" else 20, "warmup": 3, "knn_train": 50000,
            "knn_test": 10000, "pd_train": 50000, "pd_test": 10000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(args.methods) - set(METHODS))
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args = resolve(args, device)
    sections = parse_only(args.only)
    torch.set_num_threads(args.threads)

    import sklearn

    meta = {"device": str(device), "device_name": device_name(device),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "quick": args.quick,
            "argv": sys.argv[1:] if argv is None else list(argv),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"pcl benchmark on {meta['device_name']} [{device}], torch {meta['torch']}, "
          f"torchvision {meta['torchvision']}, sklearn {meta['sklearn']}")
    print(f"threads: torch.set_num_threads({args.threads}) for every path ({THREADS_NOTE})")
    if args.quick:
        print("QUICK MODE: tiny sizes, a smoke check only -- these numbers are not measurements")
    results: dict[str, Any] = {"meta": meta}

    if "train" in sections:
        print(f"\n== training throughput, WRN-16-2, {args.warmup} warm-up + {args.steps} timed "
              f"steps; pcl: {'bf16 autocast' if device.type == 'cuda' else 'fp32'}, "
              f"channels_last, on-device augmentation; baseline: fp32 NCHW, PIL transforms, "
              f"DataLoader(num_workers={args.baseline_workers})")
        batches = {"ce": args.ce_batch, "supcon": args.supcon_batch}
        rows = []
        for m in args.methods:
            rows.append(bench_train(m, batches[m], args.steps, args.warmup, device,
                                    args.baseline_workers, args.vflip))
            print(f"  {m}: done", flush=True)
        print_train(rows)
        results["train"] = {r.method: asdict(r) for r in rows}

    if "knn" in sections:
        print(f"\n== k-NN: pcl (torch, {device}) vs scikit-learn KNeighborsClassifier "
              f"(brute, fit + predict)")
        results["knn"] = bench_knn(args.knn_train, args.knn_test, device, args.threads,
                                   not args.no_sklearn_parallel)
        print_knn(results["knn"])

    if "pd" in sections:
        print("\n== prediction-depth cost per model")
        results["pd"] = bench_pd(args.pd_train, args.pd_test, device)
        print_pd(results["pd"])

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
