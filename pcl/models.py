"""Pre-activation WideResNet (Zagoruyko & Komodakis 2016), the contrastive wrapper, and how
every forward pass runs (channels_last, autocast for training, one batched fp32 evaluation loop).

Probe taps (for prediction depth), in forward order, each global-average-pooled:
``stem``; for every residual block ``gG.bB.pre`` (after the block's first BN-ReLU),
``gG.bB.mid`` (after its second BN-ReLU, inside the block) and ``gG.bB.out`` (the block output);
``penultimate`` (after the final BN-ReLU: the feature); ``logits``.
WRN-16-2 has 1 + 6x3 + 2 = 21 taps.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import augment


class Block(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus (1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
                         if cin != cout or stride != 1 else None)

    def forward(self, x: torch.Tensor, taps: list | None = None) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = F.relu(self.bn2(self.conv1(o)))
        if taps is not None:
            taps.append(o)
            taps.append(y)
        y = self.conv2(y)
        out = y + (self.shortcut(o) if self.shortcut is not None else x)
        if taps is not None:
            taps.append(out)
        return out


class WideResNet(nn.Module):
    """Pre-activation WRN-depth-width with a linear classifier ``fc``."""

    def __init__(self, depth: int = 16, width: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1; got {depth}")
        n = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.depth, self.width = depth, width
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        groups, cin = [], 16
        for cout, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = [Block(cin if b == 0 else cout, cout, stride if b == 0 else 1) for b in range(n)]
            groups.append(nn.Sequential(*blocks))
            cin = cout
        self.groups = nn.ModuleList(groups)
        self.bn = nn.BatchNorm2d(cin)
        self.feature_dim = cin
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def tap_names(self) -> list[str]:
        names = ["stem"]
        for gi, g in enumerate(self.groups):
            for bi in range(len(g)):
                names += [f"g{gi}.b{bi}.{t}" for t in ("pre", "mid", "out")]
        return names + ["penultimate", "logits"]

    def _trunk(self, x: torch.Tensor, taps: list | None = None) -> torch.Tensor:
        x = self.stem(x)
        if taps is not None:
            taps.append(x)
        for g in self.groups:
            for block in g:
                x = block(x, taps)
        return F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate feature, (B, 64*width)."""
        return self._trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self._trunk(x))

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pooled representation at every probe tap (see :meth:`tap_names`), one forward pass."""
        raw: list = []
        feat = self._trunk(x, raw)
        pooled = [F.adaptive_avg_pool2d(t, 1).flatten(1) for t in raw]
        return pooled + [feat, self.fc(feat)]


class SupConNet(nn.Module):
    """A WRN encoder (``net``; its ``fc`` is the linear-evaluation classifier) + projection head
    (SupCon and SimCLR)."""

    def __init__(self, depth: int = 16, width: int = 2, num_classes: int = 10,
                 proj_dim: int = 128) -> None:
        super().__init__()
        self.net = WideResNet(depth, width, num_classes)
        f = self.net.feature_dim
        self.head = nn.Sequential(nn.Linear(f, f), nn.ReLU(inplace=True), nn.Linear(f, proj_dim))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised projection of the encoder feature (the SupCon embedding)."""
        return F.normalize(self.head(self.net.features(x)).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def wide_resnet(depth: int = 16, width: int = 2, num_classes: int = 10) -> WideResNet:
    """The protocol's pre-activation WRN; WRN-16-2 with 10 classes has 691,674 parameters."""
    return WideResNet(depth, width, num_classes)


# ------------------------------------------------------------------------------------------------
def channels_last(x: torch.Tensor) -> torch.Tensor:
    """channels_last everywhere: faster on CUDA and, measured, on this project's CPUs too."""
    return x.contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for training when the config asks for it (BatchNorm and losses stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


#: Evaluation batch size per device type, chosen by measurement (``make bench``): on CPU, batch
#: 100 ran 2.2-2.6x faster than 1,000 (cache effects; 25-200 were flat); on CUDA not measured yet
#: (``make gpu-check`` records the fastest), so 1,000.
EVAL_BATCH = {"cpu": 100, "cuda": 1000}


def eval_batch_size(device: torch.device | str) -> int:
    """The evaluation batch size for ``device`` (:data:`EVAL_BATCH`)."""
    return EVAL_BATCH.get(torch.device(device).type, 1000)


class _NoTF32:
    """Evaluation in true fp32 on CUDA: TF32 convolutions and matmuls off while it runs."""

    def __enter__(self) -> "_NoTF32":
        self.old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        return self

    def __exit__(self, *exc) -> None:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.old


@torch.no_grad()
def eval_forward(net: nn.Module, images: torch.Tensor, device: torch.device | str,
                 fn: Callable[[torch.Tensor], Sequence[torch.Tensor]],
                 batch_size: int | None = None) -> list[torch.Tensor]:
    """Test-time outputs ``fn(x)`` over all ``images``, concatenated on the CPU in float32.

    The one evaluation loop (test logits and features, probe taps): eval mode, no augmentation,
    channels_last, batches of ``batch_size`` (default :func:`eval_batch_size`), never under
    autocast (bf16-rounded logits tie on exactly the boundary images PIEs are made of) and never
    in TF32, so a GPU and a CPU give the same predictions for the same weights.
    """
    device = torch.device(device)
    batch_size = batch_size or eval_batch_size(device)
    net.eval()
    chunks: list[list[torch.Tensor]] = []
    with _NoTF32():
        for i in range(0, len(images), batch_size):
            x = channels_last(augment.eval_transform(images[i:i + batch_size].to(device)))
            chunks.append([t.float().cpu() for t in fn(x)])
    return [torch.cat(parts) for parts in zip(*chunks, strict=True)]
