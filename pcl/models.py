"""Pre-activation WideResNet (docs/PROTOCOL.md, "Models"), the contrastive wrapper, and how every
forward pass runs (channels_last, autocast for training, one batched fp32 evaluation loop).

Probe taps (prediction depth), in forward order, each global-average-pooled: ``stem``; per residual
block ``gG.bB.pre`` (after its first BN-ReLU), ``gG.bB.mid`` (after its second) and ``gG.bB.out``
(its output); ``penultimate`` (after the final BN-ReLU: the feature); ``logits``. WRN-16-2: 21.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

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
        out = self.conv2(y) + (self.shortcut(o) if self.shortcut is not None else x)
        if taps is not None:
            taps += [o, y, out]
        return out


class WideResNet(nn.Module):
    """Pre-activation WRN-depth-width with a linear classifier ``fc`` (WRN-16-2 with 10 classes:
    691,674 parameters)."""

    def __init__(self, depth: int = 16, width: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1; got {depth}")
        n = (depth - 4) // 6
        self.depth, self.width = depth, width
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        groups, cin = [], 16
        for cout, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            groups.append(nn.Sequential(*(Block(cin if b == 0 else cout, cout, stride if b == 0 else 1)
                                          for b in range(n))))
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
        blocks = [f"g{gi}.b{bi}.{t}" for gi, g in enumerate(self.groups) for bi in range(len(g))
                  for t in ("pre", "mid", "out")]
        return ["stem", *blocks, "penultimate", "logits"]

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
        return [F.adaptive_avg_pool2d(t, 1).flatten(1) for t in raw] + [feat, self.fc(feat)]


class SupConNet(nn.Module):
    """A WRN encoder ``net`` (its ``fc``: the linear-evaluation classifier) + projection head."""

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


wide_resnet = WideResNet  # its public constructor name (README.md, "The pcl package")


# ------------------------------------------------------------------------------------------------
def channels_last(x: torch.Tensor) -> torch.Tensor:
    """channels_last everywhere: faster on CUDA and, measured, on this project's CPUs too."""
    return x.contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for training when the config asks for it (BatchNorm and losses stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


#: Evaluation batch size per device type, measured (README.md, "Speed"; on CUDA ``make gpu-check``
#: records the fastest).
EVAL_BATCH = {"cpu": 100, "cuda": 1000}


@contextmanager
def _no_tf32() -> Iterator[None]:
    """Evaluation in true fp32 on CUDA: TF32 convolutions and matmuls off while it runs."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@torch.no_grad()
def eval_forward(net: nn.Module, images: torch.Tensor, device: torch.device | str,
                 fn: Callable[[torch.Tensor], Sequence[torch.Tensor]],
                 batch_size: int | None = None) -> list[torch.Tensor]:
    """Test-time outputs ``fn(x)`` over all ``images``, concatenated on the CPU in float32.

    The one evaluation loop (test logits and features, probe taps): eval mode, no augmentation,
    channels_last, batches of ``batch_size`` (default :data:`EVAL_BATCH`), never under
    autocast (bf16-rounded logits tie on exactly the boundary images PIEs are made of) and never
    in TF32, so a GPU and a CPU give the same predictions for the same weights.
    """
    device = torch.device(device)
    batch_size = batch_size or EVAL_BATCH.get(device.type, 1000)
    net.eval()
    chunks: list[list[torch.Tensor]] = []
    with _no_tf32():
        for i in range(0, len(images), batch_size):
            x = channels_last(augment.eval_transform(images[i:i + batch_size].to(device)))
            chunks.append([t.float().cpu() for t in fn(x)])
    return [torch.cat(parts) for parts in zip(*chunks, strict=True)]
