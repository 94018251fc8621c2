"""Unstructured magnitude pruning: masks, the Zhu & Gupta GMP schedule, and a training hook.

Prunable tensors are the weights of ``nn.Conv2d`` and ``nn.Linear`` modules (never biases or BN).
Masks are boolean keep-masks (True = kept) keyed by parameter name. Pruning is exact: a prune to
sparsity s drops ``round(s * n)`` weights (per tensor for ``layerwise``, over all prunable weights
for ``global``), smallest magnitude first, weights that are already zero first of all.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .config import SCOPES


def _check_sparsity(s: float) -> None:
    if not (0.0 <= s < 1.0):
        raise ValueError(f"sparsity must be in [0, 1); got {s}")


def prunable(model: nn.Module, include: Callable[[str], bool] | None = None) -> dict[str, nn.Parameter]:
    """Conv and linear weights by parameter name, optionally filtered by ``include(name)``."""
    out = {f"{mname}.weight" if mname else "weight": m.weight for mname, m in model.named_modules()
           if isinstance(m, (nn.Conv2d, nn.Linear))}
    return {n: w for n, w in out.items() if include is None or include(n)}


def cubic(final: float, frac: float) -> float:
    """Zhu & Gupta's ramp: s_f + (0 - s_f)(1 - frac)^3 at fraction ``frac`` of the window."""
    return float(final + (0.0 - final) * (1.0 - frac) ** 3)


def linear(final: float, frac: float) -> float:
    """A linear ramp from 0 to ``final`` over the window."""
    return float(final * frac)


def gmp_sparsity(step: float, begin: float, end: float, final: float,
                 ramp: Callable[[float, float], float] = cubic) -> float:
    """Target sparsity at ``step`` of a window [begin, end]: 0 before, ``final`` after, ``ramp``
    (Zhu & Gupta's cubic by default) inside."""
    if end <= begin:
        raise ValueError(f"GMP begin must be before end; got begin={begin}, end={end}")
    if step <= begin:
        return 0.0
    if step >= end:
        return float(final)
    return ramp(final, (step - begin) / (end - begin))


def _scores(w: torch.Tensor) -> torch.Tensor:
    """|w| with zero weights ranked below every non-zero weight."""
    a = w.detach().abs().float().flatten()
    return torch.where(a == 0, torch.full_like(a, -1.0), a)


def _keep_mask(scores: torch.Tensor, n_drop: int) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_drop > 0:
        # stable sort: among equal magnitudes the earlier index is dropped first (deterministic)
        order = torch.sort(scores, stable=True).indices
        keep[order[:n_drop]] = False
    return keep


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global",
                    include: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Boolean keep-masks for the prunable weights at ``sparsity``, ``global`` or ``layerwise``."""
    _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; allowed: {SCOPES}")
    params = prunable(model, include)
    if not params:
        raise ValueError("the model has no prunable (conv or linear) weights")
    if scope == "layerwise":
        return {n: _keep_mask(_scores(p), round(sparsity * p.numel())).view_as(p)
                for n, p in params.items()}
    scores = torch.cat([_scores(p) for p in params.values()])
    keep = _keep_mask(scores, round(sparsity * scores.numel())).split([p.numel() for p in params.values()])
    return {n: k.view_as(p) for (n, p), k in zip(params.items(), keep, strict=True)}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every weight that ``masks`` drops (in place)."""
    params = dict(model.named_parameters())
    for name, m in masks.items():
        params[name].mul_(m.to(params[name]))  # the mask in the weight's dtype, on its device


def layer_sparsity(model: nn.Module, include: Callable[[str], bool] | None = None) -> dict[str, float]:
    """Fraction of exactly-zero weights in every prunable tensor."""
    return {n: float((p == 0).sum()) / p.numel() for n, p in prunable(model, include).items()}


def sparsity(model: nn.Module, include: Callable[[str], bool] | None = None) -> float:
    """Fraction of exactly-zero weights over all prunable weights together."""
    params = prunable(model, include)
    zeros = sum(int((p == 0).sum()) for p in params.values())
    return zeros / max(1, sum(p.numel() for p in params.values()))


class Pruner:
    """Training hook: holds masks, re-applies them after every optimiser step, grows them by GMP.

    With ``final`` > 0 and a (begin, end) window in steps (counted from 1), ``after_step`` prunes
    to :func:`gmp_sparsity` with the schedule's ``ramp`` at every ``every``-th step of the window
    (and at its end), ``scope`` wide; masks only grow, because weights already zero go first."""

    def __init__(self, model: nn.Module, *, final: float = 0.0, begin_step: int = 0,
                 end_step: int = 1, every: int = 1, scope: str = "layerwise",
                 include: Callable[[str], bool] | None = None,
                 masks: dict[str, torch.Tensor] | None = None,
                 ramp: Callable[[float, float], float] = cubic) -> None:
        _check_sparsity(final)
        self.model, self.final, self.scope, self.include, self.ramp = model, final, scope, include, ramp
        self.begin, self.end, self.every = begin_step, max(end_step, begin_step + 1), max(1, every)
        self.masks = masks if masks is not None else {}
        self.events: list[tuple[int, float, float]] = []  # (step, target, measured)

    @classmethod
    def gmp(cls, model: nn.Module, final: float, begin: float, end: float, total_steps: int,
            events: int = 40, **kw) -> "Pruner":
        """GMP with begin/end as fractions of ``total_steps`` and about ``events`` prunes."""
        if not (0 <= begin < end <= 1):
            raise ValueError(f"GMP fractions must satisfy 0 <= begin < end <= 1; got {begin}, {end}")
        b = round(begin * total_steps)
        e = max(round(end * total_steps), b + 1)
        return cls(model, final=final, begin_step=b, end_step=e,
                   every=max(1, round((e - b) / events)), **kw)

    def after_step(self, step: int) -> None:
        if self.masks:  # first undo what this optimiser step did to pruned weights
            apply_masks(self.model, self.masks)
        if self.final == 0 or not self.begin <= step <= self.end or (
                (step - self.begin) % self.every and step != self.end):
            return  # not a pruning event
        target = gmp_sparsity(step, self.begin, self.end, self.final, self.ramp)
        if target > 0:
            new = magnitude_masks(self.model, target, self.scope, self.include)
            self.masks = {n: new[n] & self.masks[n].to(new[n].device) if n in self.masks else new[n]
                          for n in new}
            apply_masks(self.model, self.masks)
            self.events.append((step, target, sparsity(self.model, self.include)))

    def state_dict(self) -> dict:
        return {"masks": {n: m.cpu() for n, m in self.masks.items()}, "events": self.events}

    def load_state_dict(self, state: dict) -> None:
        dev = next(self.model.parameters()).device
        self.masks = {n: m.to(dev) for n, m in state["masks"].items()}
        self.events = [tuple(e) for e in state["events"]]


def encoder_only(name: str) -> bool:
    """For SupCon encoder training: the encoder's conv weights (not its fc, not the head)."""
    return name.startswith("net.") and not name.startswith("net.fc")


def head_only(name: str) -> bool:
    """The linear-evaluation classifier of a WideResNet."""
    return name.startswith("fc.")

