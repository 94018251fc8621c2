"""When a run has diverged: the criterion ``train.fit`` checks after every epoch. README (Presets,
**Divergence**) gives the three tests, their limits below and why each sits where it does."""
from __future__ import annotations

from typing import Iterable

import torch

from .config import RunConfig
from .methods import get as get_method

LOSS_LIMIT = 1e6  # |loss| of a step; every loss here is O(1) to O(100)
NORM_GROWTH = 1e3  # growth of the parameter norm since the phase started (weight decay keeps a few-fold)
LOGIT_LIMIT = 1e6  # 1 / temperature: beyond it fp32 rounds logits in steps of 0.06 or coarser


class DivergedError(FloatingPointError):
    """A run's loss or weights blew up (README, Presets: Divergence): it is stopped, never finished."""


def param_norm(params: Iterable[torch.Tensor]) -> float:
    """The L2 norm of all ``params`` together (one device sync)."""
    norms = [p.detach().float().norm() for p in params]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def check_epoch(losses: torch.Tensor, params: list, norm0: float) -> tuple[int, str] | None:
    """(step of the epoch, what blew up) for an epoch with per-step ``losses`` that diverged, whose
    phase's ``params`` had the norm ``norm0`` when it started; None when it did not."""
    bad = (~torch.isfinite(losses) | (losses.abs() > LOSS_LIMIT)).nonzero()
    if len(bad):
        i = int(bad[0])
        what = "non-finite" if not torch.isfinite(losses[i]) else f"exploding (> {LOSS_LIMIT:g})"
        return i, f"{what} loss {float(losses[i]):g}"
    norm, limit = param_norm(params), NORM_GROWTH * max(norm0, 1.0)
    if not norm <= limit:  # also NaN
        return len(losses) - 1, (f"exploding weights (parameter norm {norm:.3g}, more than "
                                 f"{NORM_GROWTH:g} x the {norm0:.3g} the phase started with)")
    return None


def check_config(cfg: RunConfig, run_name: str) -> None:
    """Refuse a run whose logits could exceed LOGIT_LIMIT (a method using ``temperature``)."""
    t = cfg.temperature
    if "temperature" in get_method(cfg.method).owns and 1.0 / t > LOGIT_LIMIT:
        raise DivergedError(f"{run_name}: temperature {t:g} makes logits up to 1/temperature = "
                            f"{1.0 / t:.3g} (> {LOGIT_LIMIT:g}), beyond what fp32 resolves; the run "
                            f"would train on rounding noise. Use a temperature of at least "
                            f"{1.0 / LOGIT_LIMIT:g}.")
