"""CIFAR-10 as uint8 tensors: torchvision's download, an image-folder export, or synthetic data
(README.md, "Data"). The decoded data is cached next to it (written atomically); an image-folder
cache is used only while its per-class image counts match the folder's (an export that gained or
lost files is decoded again, with a warning); an image that cannot be decoded is an error naming it.
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .store import atomic_save

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SOURCES = ("auto", "folder", "torchvision")
_EXTS = {".png", ".jpg", ".jpeg"}


class DataError(RuntimeError):
    """Missing or malformed data; the message says what was looked for and how to get it."""


@dataclass
class Split:
    """One split: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    train: Split
    test: Split
    name: str
    classes: tuple[str, ...] = CLASSES


def default_root() -> Path:
    """``$PCL_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("PCL_DATA", "data"))


def _image_files(d: Path) -> list[Path]:
    """The .png/.jpg files of one class folder, in name order (the order images are read in)."""
    return sorted(p for p in d.iterdir() if p.suffix.lower() in _EXTS)


def folder_counts(root: str | Path) -> dict[str, list[int]]:
    """Images per class (canonical order) in ``root/train`` and ``root/test`` of an image-folder
    export, counted from file names without decoding (a missing class folder counts 0)."""
    root = Path(root)
    return {split: [len(_image_files(root / split / c)) if (root / split / c).is_dir() else 0
                    for c in CLASSES] for split in ("train", "test")}


def _count_mismatch(blob: dict, counts: dict[str, list[int]]) -> str | None:
    """Where a cached dataset's per-class counts differ from the folder's, or None."""
    for split, want in counts.items():
        have = torch.bincount(blob[split][1], minlength=len(CLASSES)).tolist()
        if len(have) != len(want):
            return f"{split} has {len(want)} classes, the cache {len(have)}"
        for cls, h, w in zip(CLASSES, have, want, strict=True):
            if h != w:
                return f"{split}/{cls} has {w} images, the cache {h}"
    return None


def _decode(f: Path) -> np.ndarray:
    """One 32x32 image as HWC uint8 RGB; a file PIL cannot read is a :class:`DataError` naming it."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # truncated, corrupt, or not an image at all
        raise DataError(f"cannot decode image {f} ({type(e).__name__}: {e}); the file is truncated "
                        "or corrupt: export it again, or delete it") from e
    if arr.shape != (32, 32, 3):
        raise DataError(f"{f} is {arr.shape[1]}x{arr.shape[0]}, CIFAR-10 images are 32x32")
    return arr


def _load_folder_split(root: Path, split: str) -> Split:
    base = root / split
    missing = [c for c in CLASSES if not (base / c).is_dir()]
    if missing:
        raise DataError(f"image-folder source {root}: expected {base}/<class>/ for every CIFAR-10 "
                        f"class; missing {missing}")
    images, labels = [], []
    for label, cls in enumerate(CLASSES):
        files = _image_files(base / cls)
        if not files:
            raise DataError(f"no .png/.jpg images in {base / cls}")
        images += [_decode(f) for f in files]
        labels += [label] * len(files)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.tensor(labels, dtype=torch.int64))


def _load_torchvision_split(root: Path, train: bool, download: bool) -> Split:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=download)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(
            f"CIFAR-10 not found under {root} ({e}). Get it with download=True (needs internet), "
            f"or point the data root at an image-folder export with train/<class>/ and "
            f"test/<class>/ folders.") from None
    if list(ds.classes) != list(CLASSES):
        raise DataError(f"unexpected class order {ds.classes}")
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.tensor(ds.targets, dtype=torch.int64))


def detect_source(root: Path) -> str:
    """'folder' when ``root/train`` and ``root/test`` exist, else 'torchvision'."""
    return "folder" if (root / "train").is_dir() and (root / "test").is_dir() else "torchvision"


def load_cifar10(root: str | Path | None = None, source: str = "auto",
                 download: bool = True) -> Dataset:
    """Load CIFAR-10 from ``root`` (default :func:`default_root`), decoding once and caching;
    ``source``: 'folder', 'torchvision' (downloaded when ``download``) or 'auto' (README.md, "Data")."""
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; allowed: {SOURCES}")
    root = Path(root) if root is not None else default_root()
    if source == "auto":
        source = detect_source(root)
    cache = root / f"pcl-cifar10-{source}.pt"
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            cached = Dataset(Split(*blob["train"]), Split(*blob["test"]), f"cifar10-{source}")
            stale = _count_mismatch(blob, folder_counts(root)) if source == "folder" else None
        except Exception:  # a damaged cache is rebuilt, never used
            cached, stale = None, None
        if cached is not None and stale is None:
            return cached
        if stale is not None:
            warnings.warn(f"the cached {cache} does not match the image folder {root} ({stale}); "
                          "decoding the folder again", stacklevel=2)
        cache.unlink(missing_ok=True)
    if source == "folder":
        train, test = _load_folder_split(root, "train"), _load_folder_split(root, "test")
    else:
        root.mkdir(parents=True, exist_ok=True)
        train, test = (_load_torchvision_split(root, t, download) for t in (True, False))
    if len(train) != 50000 or len(test) != 10000:
        raise DataError(f"{root}: expected 50,000 train and 10,000 test images, found "
                        f"{len(train)} and {len(test)}")
    atomic_save({"train": (train.images, train.labels), "test": (test.images, test.labels)}, cache)
    return Dataset(train, test, f"cifar10-{source}")


def synthetic_cifar(n_train: int, n_test: int | None = None, num_classes: int = 10,
                    seed: int = 0) -> Dataset:
    """CIFAR-shaped learnable data: each class is a noisy colour/stripe pattern."""
    n_test = n_train if n_test is None else n_test
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 3, 32, 32, generator=g) * 0.6 + 0.2
    stripes = torch.linspace(0, 3.14 * 4, 32)

    def make(n: int) -> Split:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        phase = (y.float() * 0.7)[:, None, None, None]
        pattern = 0.2 * torch.sin(stripes[None, None, None, :] + phase)
        x = protos[y] + pattern + 0.15 * torch.randn(n, 3, 32, 32, generator=g)
        return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), y)

    return Dataset(make(n_train), make(n_test), "synthetic")


def balanced_subset(split: Split, per_class: int, num_classes: int = 10, seed: int = 0) -> Split:
    """A deterministic class-balanced subset: ``per_class`` images of every class."""
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in range(num_classes):
        members = torch.nonzero(split.labels == c).flatten()
        if len(members) < per_class:
            raise DataError(f"class {c} has {len(members)} images; {per_class} requested")
        idx.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    order = torch.cat(idx).sort().values
    return Split(split.images[order], split.labels[order])


def load_for_config(cfg, root: str | Path | None = None) -> Dataset:
    """The dataset a :class:`~pcl.config.RunConfig` asks for, with its balanced subsets if any."""
    if cfg.dataset == "synthetic":
        ds = synthetic_cifar(cfg.synthetic_size, num_classes=cfg.num_classes)
    else:
        ds = _cached_cifar(str(root if root is not None else default_root()))
    sub = lambda s, n: s if n is None else balanced_subset(s, n, cfg.num_classes)
    return Dataset(sub(ds.train, cfg.train_per_class), sub(ds.test, cfg.test_per_class), ds.name)


@functools.cache
def _cached_cifar(root: str) -> Dataset:
    return load_cifar10(root)
