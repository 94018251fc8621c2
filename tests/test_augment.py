"""pcl.augment: per-image augmentation against brute force and torchvision references."""
from __future__ import annotations

import colorsys

import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from pcl import augment as A

PROTO_MEAN = (0.4914, 0.4822, 0.4465)
PROTO_STD = (0.2470, 0.2435, 0.2616)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rand_u8(b, seed=0, h=32, w=32):
    return torch.randint(0, 256, (b, 3, h, w), generator=_gen(seed), dtype=torch.uint8)


# --- random crop --------------------------------------------------------------------------------
def test_random_crop_is_a_crop_of_the_zero_padded_image():
    x = _rand_u8(16, seed=1)
    out = A.random_crop(x, _gen(2))
    assert out.shape == x.shape and out.dtype == torch.uint8
    offsets = []
    for i in range(len(x)):
        padded = torch.zeros(3, 40, 40, dtype=torch.uint8)  # brute-force zero padding
        padded[:, 4:36, 4:36] = x[i]
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(padded[:, dy:dy + 32, dx:dx + 32], out[i])]
        assert len(matches) == 1, f"image {i}: output is not one crop of the padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 4  # offsets vary across the batch


def test_random_crop_offsets_cover_all_81_positions():
    x = _rand_u8(1, seed=3).expand(400, -1, -1, -1).contiguous()
    out = A.random_crop(x, _gen(4))
    padded = torch.zeros(3, 40, 40, dtype=torch.uint8)
    padded[:, 4:36, 4:36] = x[0]
    crops = {(dy, dx): padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)}
    seen = set()
    for i in range(len(out)):
        hit = [k for k, c in crops.items() if torch.equal(c, out[i])]
        assert len(hit) == 1
        seen.add(hit[0])
    assert len(seen) >= 75  # 400 uniform draws over 81 offsets miss very few


def test_per_image_independence_of_crop_and_flip():
    x = _rand_u8(1, seed=5).expand(64, -1, -1, -1).contiguous()
    crops = A.random_crop(x, _gen(6))
    distinct = {crops[i].numpy().tobytes() for i in range(64)}
    assert len(distinct) > 20
    flips = A.random_flip(x, _gen(7))
    n_flipped = sum(torch.equal(flips[i], x[0].flip(2)) for i in range(64))
    n_same = sum(torch.equal(flips[i], x[0]) for i in range(64))
    assert n_flipped + n_same == 64 and 10 < n_flipped < 54
    v = A.ce_augment(x, _gen(8))
    assert len({v[i].numpy().tobytes() for i in range(64)}) > 20
    s = A.supcon_augment(x, _gen(9))
    assert len({s[i].numpy().tobytes() for i in range(128)}) == 128


def test_random_flip_p0_p1_and_vertical():
    x = _rand_u8(8, seed=10)
    assert torch.equal(A.random_flip(x, _gen(), p=0.0), x)
    assert torch.equal(A.random_flip(x, _gen(), p=1.0), torch.stack([TF.hflip(i) for i in x]))
    assert torch.equal(A.random_flip(x, _gen(), dim=2, p=1.0), torch.stack([TF.vflip(i) for i in x]))


# --- normalisation, grayscale -------------------------------------------------------------------
def test_normalize_against_torchvision():
    x = torch.rand(5, 3, 32, 32, generator=_gen(11))
    ref = torch.stack([T.Normalize(PROTO_MEAN, PROTO_STD)(i) for i in x])
    torch.testing.assert_close(A.normalize(x), ref, rtol=1e-6, atol=1e-6)
    u = _rand_u8(3, seed=12)
    ref_u = torch.stack([T.Normalize(PROTO_MEAN, PROTO_STD)(i.float() / 255) for i in u])
    torch.testing.assert_close(A.eval_transform(u), ref_u, rtol=1e-6, atol=1e-6)
    assert A.to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]


def test_grayscale_weights():
    px = torch.eye(3).view(3, 3, 1, 1)  # pure red, green, blue pixels
    g = A.grayscale(px).flatten().tolist()
    assert g == pytest.approx([0.299, 0.587, 0.114], abs=1e-7)
    x = torch.rand(4, 3, 8, 8, generator=_gen(13))
    ref = torch.stack([TF.rgb_to_grayscale(i) for i in x])  # torchvision: 0.2989, 0.587, 0.114
    torch.testing.assert_close(A.grayscale(x), ref, atol=2e-4, rtol=0)
    gx = A.random_grayscale(x, _gen(), p=1.0)
    assert torch.equal(gx[:, 0], gx[:, 1]) and torch.equal(gx[:, 1], gx[:, 2])
    assert torch.equal(A.random_grayscale(x, _gen(), p=0.0), x)


# --- HSV and hue --------------------------------------------------------------------------------
def test_rgb_to_hsv_against_colorsys():
    x = torch.rand(2, 3, 6, 6, generator=_gen(14), dtype=torch.float64)
    x[0, :, 0, 0] = 0.5  # a gray pixel (hue and saturation 0)
    x[0, :, 0, 1] = 0.0  # black
    hsv = A._rgb_to_hsv(x)
    for b in range(2):
        for i in range(6):
            for j in range(6):
                ref = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
                assert hsv[b, :, i, j].tolist() == pytest.approx(list(ref), abs=1e-9)


def test_hsv_round_trip():
    x = torch.rand(4, 3, 16, 16, generator=_gen(15))
    torch.testing.assert_close(A._hsv_to_rgb(A._rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [-0.1, -0.03, 0.05, 0.1])
def test_hue_shift_matches_torchvision(shift):
    x = torch.rand(3, 3, 16, 16, generator=_gen(16))
    hsv = A._rgb_to_hsv(x)
    hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    ours = A._hsv_to_rgb(hsv)
    for i in range(3):
        torch.testing.assert_close(ours[i], TF.adjust_hue(x[i], shift), atol=1e-3, rtol=0)


def test_color_jitter_p0_identity_and_range():
    x = torch.rand(16, 3, 8, 8, generator=_gen(17))
    assert torch.equal(A.color_jitter(x, _gen(), p=0.0), x)
    y = A.color_jitter(x, _gen(18), p=1.0)
    assert y.min() >= 0 and y.max() <= 1
    assert all(not torch.allclose(y[i], x[i]) for i in range(16))


def test_color_jitter_brightness_only_matches_torchvision():
    """With only brightness, each image is scaled by a factor in [0.6, 1.4] and clipped."""
    x = torch.rand(32, 3, 8, 8, generator=_gen(19))
    y = A.color_jitter(x, _gen(20), brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0, p=1.0)
    factors = []
    for i in range(32):
        # recover the factor from an unclipped pixel, then compare with torchvision
        mask = (y[i] < 0.999) & (x[i] > 0.05)
        f = float((y[i][mask] / x[i][mask]).median())
        assert 0.6 - 1e-4 <= f <= 1.4 + 1e-4
        torch.testing.assert_close(y[i], TF.adjust_brightness(x[i], f), atol=1e-4, rtol=0)
        factors.append(f)
    assert max(factors) - min(factors) > 0.3  # per image


# --- random resized crop ------------------------------------------------------------------------
def test_resized_crop_boxes_constraints():
    b = 1000
    boxes = A.resized_crop_boxes(b, 32, 32, _gen(21), "cpu")
    assert boxes.shape == (b, 4)
    x1, y1, x2, y2 = boxes.unbind(1)
    for v in (x1, y1, x2, y2):
        assert torch.equal(v, v.round())  # integer pixels
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 32).all() and (y2 <= 32).all()
    w, h = x2 - x1, y2 - y1
    assert (w >= 1).all() and (h >= 1).all()
    # rounding each side to a whole pixel moves area and ratio by at most half a pixel per side
    assert ((w + 0.5) * (h + 0.5) >= 0.2 * 1024).all()
    assert ((w - 0.5) * (h - 0.5) <= 1024).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    area = w * h / 1024
    assert area.min() < 0.3 and area.max() > 0.9  # the whole range is used
    assert len({tuple(r) for r in boxes.tolist()}) > 300  # per-image boxes
    # positions are spread: both corners of the free space are reached
    assert (x1 == 0).any() and (x2 == 32).any()


def test_random_resized_crop_full_box_is_identity():
    """scale=ratio=1 crops the whole image: resizing 32->32 must give the image back
    (torchvision's RandomResizedCrop does)."""
    x = torch.rand(4, 3, 32, 32, generator=_gen(22))
    out = A.random_resized_crop(x, _gen(23), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_random_resized_crop_matches_torchvision_bilinear():
    """Every output equals torchvision's resized_crop of the same box (interior pixels; at the
    border torchvision clamps to the crop while roi_align may read the neighbouring pixel)."""
    x = torch.rand(16, 3, 32, 32, generator=_gen(24))
    g = _gen(25)
    boxes = A.resized_crop_boxes(16, 32, 32, _gen(25), "cpu")  # the same draws
    out = A.random_resized_crop(x, g)
    for i in range(16):
        x1, y1, x2, y2 = (int(v) for v in boxes[i])
        ref = TF.resized_crop(x[i], y1, x1, y2 - y1, x2 - x1, [32, 32], antialias=False)
        torch.testing.assert_close(out[i, :, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-4, rtol=0)


# --- pipelines ----------------------------------------------------------------------------------
def test_supcon_augment_shape_views_and_determinism():
    x = _rand_u8(8, seed=26)
    a = A.supcon_augment(x, _gen(27))
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert all(not torch.allclose(a[i], a[i + 8]) for i in range(8))  # the two views differ
    b = A.supcon_augment(x, _gen(27))
    assert torch.equal(a, b)
    c = A.supcon_augment(x, _gen(28))
    assert not torch.equal(a, c)


def test_ce_augment_is_crop_flip_then_normalise():
    x = _rand_u8(6, seed=29)
    out = A.ce_augment(x, _gen(30))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, A.ce_augment(x, _gen(30)))
    # undo normalisation: every image is one of the 81 crops of the padded image, maybe flipped
    mean = torch.tensor(PROTO_MEAN).view(3, 1, 1)
    std = torch.tensor(PROTO_STD).view(3, 1, 1)
    for i in range(6):
        back = ((out[i] * std + mean) * 255).round().to(torch.uint8)
        padded = torch.zeros(3, 40, 40, dtype=torch.uint8)
        padded[:, 4:36, 4:36] = x[i]
        ok = any(torch.equal(back, c) or torch.equal(back, c.flip(2))
                 for c in (padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)))
        assert ok
    # vflip is applied when asked: with p=0.5 some images differ from the h-flip-only pipeline
    assert not torch.equal(A.ce_augment(x, _gen(31), vflip=True), A.ce_augment(x, _gen(31)))
