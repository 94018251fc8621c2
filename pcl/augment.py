"""Augmentation of whole batches, every image with its own random parameters (docs/PROTOCOL.md,
"Data"): ``(B, 3, H, W)`` tensors and a ``torch.Generator`` on any one device, no per-image Python
(parameters are ``(B,)`` tensors applied by broadcasting, gathering or one ``roi_align`` call).
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

from .data import MEAN, STD


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return x.float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel CIFAR-10 normalisation of float [0, 1] images."""
    mean, std = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) for v in (MEAN, STD))
    return (x - mean) / std


def random_crop(x: torch.Tensor, g: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per image."""
    b, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator, dim: int = 3, p: float = 0.5) -> torch.Tensor:
    """Flip each image along ``dim`` (3: horizontal, 2: vertical) with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=g, device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(dim), x)


def resized_crop_boxes(b: int, h: int, w: int, g: torch.Generator, device,
                       scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop's boxes, ``(b, 4)`` as (x1, y1, x2, y2) in pixels. As torchvision: up to
    ``tries`` draws of (area, log-uniform aspect ratio) per image, the first that fits wins; if none
    fits, a centre crop clamped to the allowed ratio."""
    area = h * w
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(b, tries, generator=g, device=device)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(lo + (hi - lo) * torch.rand(b, tries, generator=g, device=device))
    cw = torch.sqrt(s * area * r).round()
    ch = torch.sqrt(s * area / r).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.argmax(ok.int(), dim=1, keepdim=True)  # first fitting try (0 if none fits)
    any_ok = ok.any(dim=1)
    # fallback: centre crop at the nearest allowed ratio
    fw = round(h * ratio[0]) if w / h < ratio[0] else w
    fh = round(w / ratio[1]) if w / h > ratio[1] else h
    cw = torch.where(any_ok, cw.gather(1, first).squeeze(1), float(fw))
    ch = torch.where(any_ok, ch.gather(1, first).squeeze(1), float(fh))
    u = torch.rand(b, 2, generator=g, device=device)
    x1 = torch.floor(u[:, 0] * (w - cw + 1)).clamp(max=w - cw)
    y1 = torch.floor(u[:, 1] * (h - ch + 1)).clamp(max=h - ch)
    x1 = torch.where(any_ok, x1, ((w - cw) / 2).floor())
    y1 = torch.where(any_ok, y1, ((h - ch) / 2).floor())
    return torch.stack([x1, y1, x1 + cw, y1 + ch], dim=1)


def random_resized_crop(x: torch.Tensor, g: torch.Generator, size: int = 32,
                        scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-image random resized crop of float images in one ``roi_align`` call: one sample per output
    pixel (``sampling_ratio=1``, ``aligned=True``) is torchvision's bilinear ``resized_crop``
    (crops are upsampled here, so antialiasing plays no part)."""
    b, _, h, w = x.shape
    boxes = resized_crop_boxes(b, h, w, g, x.device, scale, ratio)
    rois = torch.cat([torch.arange(b, device=x.device, dtype=x.dtype)[:, None], boxes.to(x.dtype)], 1)
    return roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, (B, 1, H, W)."""
    wts = torch.tensor((0.299, 0.587, 0.114), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * wts).sum(1, keepdim=True)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dc = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / dc, (maxc - g) / dc, (maxc - b) / dc
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))  # each by hue sector i
    return torch.stack([torch.stack(c, 1).gather(1, i[:, None]).squeeze(1) for c in rgb], 1)


def color_jitter(x: torch.Tensor, g: torch.Generator, brightness=0.4, contrast=0.4,
                 saturation=0.4, hue=0.1, p: float = 0.8) -> torch.Tensor:
    """torchvision-style colour jitter, per image, applied to each image with probability ``p``, in
    a fixed order: brightness, contrast, saturation, hue (torchvision shuffles it per call)."""
    b, dev = x.shape[0], x.device

    def factor(amount: float) -> torch.Tensor:
        return (1 - amount + 2 * amount * torch.rand(b, generator=g, device=dev)).view(b, 1, 1, 1)

    y = (x * factor(brightness)).clamp(0, 1)
    mean = grayscale(y).mean(dim=(2, 3), keepdim=True)
    y = (mean + factor(contrast) * (y - mean)).clamp(0, 1)
    gray = grayscale(y)
    y = (gray + factor(saturation) * (y - gray)).clamp(0, 1)
    shift = (2 * hue * torch.rand(b, generator=g, device=dev) - hue).view(b, 1, 1)
    h, s, v = _rgb_to_hsv(y).unbind(1)
    y = _hsv_to_rgb(torch.stack([(h + shift) % 1.0, s, v], 1)).clamp(0, 1)
    apply = (torch.rand(b, generator=g, device=dev) < p).view(b, 1, 1, 1)
    return torch.where(apply, y, x)


def random_grayscale(x: torch.Tensor, g: torch.Generator, p: float = 0.2) -> torch.Tensor:
    apply = (torch.rand(x.shape[0], generator=g, device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(apply, grayscale(x).expand_as(x), x)


def ce_augment(x: torch.Tensor, g: torch.Generator, vflip: bool = False) -> torch.Tensor:
    """CE pipeline on uint8 images: pad-4 random crop, h-flip (and v-flip), normalise -> float."""
    x = random_crop(x, g)
    x = random_flip(x, g, dim=3)
    if vflip:
        x = random_flip(x, g, dim=2)
    return normalize(to_float(x))


def supcon_view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One SupCon view of uint8 images: resized crop, h-flip, jitter (p=.8), gray (p=.2), normalise."""
    y = random_resized_crop(to_float(x), g)
    y = random_flip(y, g, dim=3)
    y = color_jitter(y, g)
    y = random_grayscale(y, g)
    return normalize(y)


def supcon_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Two independent views, returned as (2B, 3, H, W): all first views, then all second views."""
    return torch.cat([supcon_view(x, g), supcon_view(x, g)], 0)


def eval_transform(x: torch.Tensor) -> torch.Tensor:
    """No augmentation: uint8 -> normalised float."""
    return normalize(to_float(x))
