"""Supervised contrastive loss (Khosla et al. 2020, L_out); without labels, SimCLR's NT-Xent."""
from __future__ import annotations

import torch


def supcon_loss(features: torch.Tensor, labels: torch.Tensor | None = None,
                temperature: float = 0.5, base_temperature: float = 0.07) -> torch.Tensor:
    """SupCon loss of L2-normalised ``features`` of shape (batch, views, dim).

    For every one of the batch*views anchors i: the mean over its positives p (every other view
    with the same label, its twin included) of -log(exp(z_i.z_p/T) / sum_{a != i} exp(z_i.z_a/T)),
    averaged over anchors and scaled by ``temperature / base_temperature``. ``labels=None``: the
    only positives are the other views of the same image (NT-Xent).
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (batch, views, dim); got shape {tuple(features.shape)}")
    b, v, _ = features.shape
    z = features.float().transpose(0, 1).reshape(b * v, -1)  # view-major: all view 0, then view 1
    ids = torch.arange(b, device=z.device) if labels is None else labels.to(z.device)
    if ids.shape != (b,):
        raise ValueError(f"labels must have shape ({b},); got {tuple(ids.shape)}")
    ids = ids.repeat(v)
    sim = z @ z.T / temperature
    self_mask = torch.eye(b * v, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (ids[:, None] == ids[None, :]) & ~self_mask
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1).clamp_min(1)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()

