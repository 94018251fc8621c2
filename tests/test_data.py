"""pcl.data: synthetic data, balanced subsets, the image-folder and torchvision sources."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcl import data as D

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


# --- synthetic ----------------------------------------------------------------------------------
def test_synthetic_shapes_dtypes_balance():
    ds = D.synthetic_cifar(200, 60)
    assert ds.train.images.shape == (200, 3, 32, 32) and ds.test.images.shape == (60, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.test.labels.shape == (60,)
    for split, n in ((ds.train, 200), (ds.test, 60)):
        counts = [int((split.labels == c).sum()) for c in range(10)]
        assert counts == [n // 10] * 10
    # labels are shuffled, not sorted by class
    assert not torch.equal(ds.train.labels, torch.arange(200) % 10)
    odd = D.synthetic_cifar(205)
    counts = [int((odd.train.labels == c).sum()) for c in range(10)]
    assert max(counts) - min(counts) == 1 and sum(counts) == 205


def test_synthetic_determinism_and_seed():
    a, b, c = D.synthetic_cifar(50, seed=0), D.synthetic_cifar(50, seed=0), D.synthetic_cifar(50, seed=1)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images, a.test.images)  # the test split is a fresh draw


def test_synthetic_classes_separable_by_class_means():
    """Learnable data: a nearest-class-mean classifier fitted on train classifies test well."""
    ds = D.synthetic_cifar(200)
    x = ds.train.images.double().flatten(1)
    xt = ds.test.images.double().flatten(1)
    means = torch.stack([x[ds.train.labels == c].mean(0) for c in range(10)])
    pred = [int(torch.argmin(((means - row) ** 2).sum(1))) for row in xt]
    acc = float((torch.tensor(pred) == ds.test.labels).double().mean())
    assert acc > 0.9


# --- balanced subset ----------------------------------------------------------------------------
def test_balanced_subset_exact_deterministic_and_subset():
    ds = D.synthetic_cifar(300, 10)
    sub = D.balanced_subset(ds.train, 7, seed=3)
    assert len(sub) == 70
    assert [int((sub.labels == c).sum()) for c in range(10)] == [7] * 10
    again = D.balanced_subset(ds.train, 7, seed=3)
    assert torch.equal(sub.images, again.images) and torch.equal(sub.labels, again.labels)
    other = D.balanced_subset(ds.train, 7, seed=4)
    assert not torch.equal(sub.images, other.images)
    # brute force: every chosen image is one original image (same pixels, same label), no repeats
    orig = [(ds.train.images[i].numpy().tobytes(), int(ds.train.labels[i])) for i in range(len(ds.train))]
    positions = []
    for j in range(len(sub)):
        key = (sub.images[j].numpy().tobytes(), int(sub.labels[j]))
        hits = [i for i, o in enumerate(orig) if o == key]
        assert len(hits) == 1, "subset image not found exactly once in the original split"
        positions.append(hits[0])
    assert len(set(positions)) == len(positions)
    assert positions == sorted(positions)  # original order kept


def test_balanced_subset_too_many_raises():
    ds = D.synthetic_cifar(50, 10)
    with pytest.raises(D.DataError, match="6"):
        D.balanced_subset(ds.train, 6)


def test_load_for_config_synthetic_with_subsets(smoke):
    from dataclasses import replace

    cfg = replace(smoke.run("ce", 0), train_per_class=4, test_per_class=3)
    ds = D.load_for_config(cfg)
    assert len(ds.train) == 40 and len(ds.test) == 30
    assert [int((ds.train.labels == c).sum()) for c in range(10)] == [4] * 10
    full = D.load_for_config(smoke.run("ce", 0))
    assert len(full.train) == 200 and len(full.test) == 200


# --- image-folder source ------------------------------------------------------------------------
def _write_export(root: Path, per_class: dict[str, int], rng: np.random.Generator,
                  splits=("train", "test")):
    """Fake export; returns {split: [(pixels HWC uint8, label), ...]} in class order, file order."""
    from PIL import Image

    truth = {}
    for split in splits:
        rows = []
        for label, cls in enumerate(CIFAR_CLASSES):
            if cls not in per_class:
                continue
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(per_class[cls]):
                arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr, mode="RGB").save(d / f"img_{k:03d}.png")
                rows.append((arr, label))
            (d / "notes.txt").write_text("not an image")  # ignored
        truth[split] = rows
    return truth


def test_folder_split_exact_pixels_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    counts = {c: 1 + (i % 3) for i, c in enumerate(CIFAR_CLASSES)}
    truth = _write_export(tmp_path, counts, rng)
    for split in ("train", "test"):
        s = D._load_folder_split(tmp_path, split)
        rows = truth[split]
        assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
        assert s.images.shape == (len(rows), 3, 32, 32)
        assert s.labels.tolist() == [lab for _, lab in rows]
        assert s.labels.tolist() == sorted(s.labels.tolist())  # canonical class order
        for i, (arr, _) in enumerate(rows):
            # brute force HWC -> CHW comparison, pixel by pixel via numpy
            assert np.array_equal(s.images[i].numpy(), np.transpose(arr, (2, 0, 1)))
    # at toy scale load_cifar10 refuses (it wants the full 50,000/10,000), naming the counts
    with pytest.raises(D.DataError, match="50,000"):
        D.load_cifar10(tmp_path, source="folder")
    with pytest.raises(D.DataError, match="50,000"):
        D.load_cifar10(tmp_path, source="auto")  # auto-detects the folder layout


def test_load_cifar10_folder_end_to_end_with_counts_patched(tmp_path, monkeypatch):
    """The full load path (and its cache) on a tiny export, with the size check satisfied."""
    rng = np.random.default_rng(1)
    truth = _write_export(tmp_path, {c: 2 for c in CIFAR_CLASSES}, rng)
    real = D._load_folder_split

    class FullSize(D.Split):  # reports CIFAR-10's split sizes, holds the tiny export
        full = 0

        def __len__(self):
            return self.full

    def fake(root, split):
        s = real(root, split)
        out = FullSize(s.images, s.labels)
        out.full = 50000 if split == "train" else 10000
        return out

    monkeypatch.setattr(D, "_load_folder_split", fake)
    ds = D.load_cifar10(tmp_path, source="folder")
    exp = np.stack([np.transpose(a, (2, 0, 1)) for a, _ in truth["train"]])
    assert np.array_equal(ds.train.images.numpy(), exp)
    assert ds.train.labels.tolist() == [lab for _, lab in truth["train"]]
    assert ds.classes == tuple(CIFAR_CLASSES)
    # the cache is used on the next load (the folder reader is not called again)
    monkeypatch.setattr(D, "_load_folder_split", lambda *a: (_ for _ in ()).throw(AssertionError))
    ds2 = D.load_cifar10(tmp_path, source="folder")
    assert torch.equal(ds2.train.images, ds.train.images)
    assert torch.equal(ds2.test.labels, ds.test.labels)


def _full_size_loader(monkeypatch, calls: list | None = None):
    """Make load_cifar10 accept a tiny export (it wants 50,000/10,000); count folder decodes."""
    real = D._load_folder_split

    class FullSize(D.Split):
        full = 0

        def __len__(self):
            return self.full

    def fake(root, split):
        if calls is not None:
            calls.append(split)
        s = real(root, split)
        out = FullSize(s.images, s.labels)
        out.full = 50000 if split == "train" else 10000
        return out

    monkeypatch.setattr(D, "_load_folder_split", fake)


def test_folder_counts_counts_image_files_only(tmp_path):
    rng = np.random.default_rng(4)
    per_class = {c: i % 3 + 1 for i, c in enumerate(CIFAR_CLASSES)}
    _write_export(tmp_path, per_class, rng)
    (tmp_path / "train" / "dog" / "extra.JPG").write_bytes(b"")  # counted: an image by its name
    want = [per_class[c] for c in CIFAR_CLASSES]
    counts = D.folder_counts(tmp_path)
    assert counts["test"] == want
    assert counts["train"] == [n + (c == "dog") for n, c in zip(want, CIFAR_CLASSES, strict=True)]
    assert D.folder_counts(tmp_path / "nowhere") == {"train": [0] * 10, "test": [0] * 10}


@pytest.mark.parametrize("change", ["add", "remove", "move"])
def test_stale_folder_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, change):
    """A cache whose per-class counts differ from the folder's is decoded again, never used."""
    from PIL import Image

    rng = np.random.default_rng(5)
    _write_export(tmp_path, {c: 2 for c in CIFAR_CLASSES}, rng)
    calls: list = []
    _full_size_loader(monkeypatch, calls)
    first = D.load_cifar10(tmp_path, source="folder")
    assert calls == ["train", "test"] and (tmp_path / "pcl-cifar10-folder.pt").exists()
    D.load_cifar10(tmp_path, source="folder")  # counts unchanged: the cache is used
    assert calls == ["train", "test"]
    cat = tmp_path / "test" / "cat"
    if change == "add":
        new = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(new, mode="RGB").save(cat / "img_zzz.png")
    elif change == "remove":
        (cat / "img_000.png").unlink()
    else:  # same total, different classes: only a per-class check sees it
        (cat / "img_000.png").rename(tmp_path / "test" / "dog" / "img_zzz.png")
    with pytest.warns(UserWarning, match=r"test/cat has \d images, the cache 2"):
        again = D.load_cifar10(tmp_path, source="folder")
    assert calls == ["train", "test"] * 2
    assert torch.equal(again.train.images, first.train.images)  # train unchanged
    counts = torch.bincount(again.test.labels, minlength=10).tolist()
    assert counts == D.folder_counts(tmp_path)["test"]
    cat_px = again.test.images[again.test.labels == CIFAR_CLASSES.index("cat")]
    if change == "add":
        assert len(cat_px) == 3 and np.array_equal(cat_px[-1].numpy(), np.transpose(new, (2, 0, 1)))
    else:
        assert len(cat_px) == 1
    # the rebuilt cache matches the folder now: used again without decoding
    D.load_cifar10(tmp_path, source="folder")
    assert calls == ["train", "test"] * 2


def _png(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, bytes]:
    _write_export(tmp_path, {c: 2 for c in CIFAR_CLASSES}, rng, splits=("train",))
    f = tmp_path / "train" / "horse" / "img_001.png"
    return f, f.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_undecodable_image_is_a_data_error_naming_the_file(tmp_path, damage):
    f, raw = _png(tmp_path, np.random.default_rng(6))
    f.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"not a png at all" * 20,
                   "empty": b""}[damage])
    with pytest.raises(D.DataError) as ei:
        D._load_folder_split(tmp_path, "train")
    assert str(f) in str(ei.value) and "corrupt" in str(ei.value)
    assert isinstance(ei.value.__cause__, (OSError, SyntaxError, ValueError))


def test_folder_missing_class_names_it(tmp_path):
    rng = np.random.default_rng(2)
    _write_export(tmp_path, {c: 1 for c in CIFAR_CLASSES if c != "frog"}, rng)
    with pytest.raises(D.DataError) as ei:
        D._load_folder_split(tmp_path, "train")
    assert "frog" in str(ei.value)
    assert "truck" not in str(ei.value).split("missing")[-1]
    with pytest.raises(D.DataError, match="frog"):
        D.load_cifar10(tmp_path, source="folder")


def test_folder_wrong_image_size(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    _write_export(tmp_path, {c: 1 for c in CIFAR_CLASSES}, rng, splits=("train",))
    Image.fromarray(np.zeros((28, 30, 3), np.uint8)).save(tmp_path / "train" / "cat" / "z.png")
    with pytest.raises(D.DataError, match="32x32"):
        D._load_folder_split(tmp_path, "train")


def test_torchvision_source_missing_gives_data_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(D.DataError) as ei:
        D.load_cifar10(empty, source="torchvision", download=False)
    assert "download" in str(ei.value)
    # auto on an empty dir also goes to torchvision and must not leak a torchvision traceback
    with pytest.raises(D.DataError):
        D.load_cifar10(empty, source="auto", download=False)


def test_unknown_source(tmp_path):
    with pytest.raises(D.DataError) as ei:
        D.load_cifar10(tmp_path, source="hdf5")
    assert "'hdf5'" in str(ei.value) and "folder" in str(ei.value)


def test_detect_source(tmp_path):
    assert D.detect_source(tmp_path) == "torchvision"
    (tmp_path / "train").mkdir()
    assert D.detect_source(tmp_path) == "torchvision"
    (tmp_path / "test").mkdir()
    assert D.detect_source(tmp_path) == "folder"


def test_split_to_and_len():
    ds = D.synthetic_cifar(20)
    s = ds.train.to("cpu")
    assert len(s) == 20 and torch.equal(s.images, ds.train.images)


def test_class_order_and_normalisation_constants():
    assert list(D.CLASSES) == CIFAR_CLASSES
    assert D.MEAN == (0.4914, 0.4822, 0.4465)
    assert D.STD == (0.2470, 0.2435, 0.2616)
