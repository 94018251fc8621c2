"""pcl.losses.supcon_loss against a brute-force per-anchor loop of the protocol's formula."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pcl.losses import supcon_loss


def _brute(features, labels, T, base_T):
    """For every view i: mean over positives p of -log(exp(z_i.z_p/T) / sum_{a!=i} exp(z_i.z_a/T))."""
    b, v, _ = features.shape
    views = [(j, k) for j in range(b) for k in range(v)]
    z = {jk: features[jk[0], jk[1]].double() for jk in views}
    lab = list(range(b)) if labels is None else [int(x) for x in labels]
    per_anchor = []
    for i in views:
        denom = sum(math.exp(float(z[i] @ z[a]) / T) for a in views if a != i)
        pos = [p for p in views if p != i and lab[p[0]] == lab[i[0]]]
        terms = [-math.log(math.exp(float(z[i] @ z[p]) / T) / denom) for p in pos]
        per_anchor.append(sum(terms) / len(terms))
    return (T / base_T) * sum(per_anchor) / len(per_anchor)


def _feats(b, v, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, v, d, generator=g), dim=2)


@pytest.mark.parametrize("T,base_T", [(0.5, 0.07), (0.1, 0.1), (1.0, 0.07)])
def test_supcon_with_repeated_labels(T, base_T):
    f = _feats(6, 2, 5, seed=0)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    ours = float(supcon_loss(f, labels, T, base_T))
    assert ours == pytest.approx(_brute(f, labels, T, base_T), rel=1e-5)


def test_nt_xent_without_labels():
    f = _feats(5, 2, 4, seed=1)
    assert float(supcon_loss(f, None, 0.5, 0.07)) == pytest.approx(_brute(f, None, 0.5, 0.07), rel=1e-5)
    # labels all distinct = no labels
    assert float(supcon_loss(f, torch.arange(5) + 3)) == pytest.approx(float(supcon_loss(f)), rel=1e-6)


def test_all_same_label_and_three_views():
    f = _feats(4, 3, 6, seed=2)
    for labels in (torch.zeros(4, dtype=torch.long), torch.tensor([1, 1, 2, 2])):
        assert float(supcon_loss(f, labels, 0.3, 0.07)) == pytest.approx(
            _brute(f, labels, 0.3, 0.07), rel=1e-5)


def test_hand_example_two_images_two_views():
    # orthogonal unit vectors: every dot product between different views is 0 except twins (1)
    e = torch.eye(4)
    f = torch.stack([torch.stack([e[0], e[0]]), torch.stack([e[1], e[1]])])  # (2, 2, 4)
    T = 0.5
    # anchor: twin dot 1, the other two dots 0 -> -log(e^2 / (e^2 + 2))
    expected = -math.log(math.exp(2) / (math.exp(2) + 2)) * (T / 0.07)
    assert float(supcon_loss(f, None, T)) == pytest.approx(expected, rel=1e-6)


def test_gradient_is_finite_and_loss_decreases_towards_labels():
    f = _feats(8, 2, 8, seed=3).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    loss = supcon_loss(f, labels)
    loss.backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    # perfectly clustered features have a lower loss than random ones
    protos = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(4)), dim=1)
    clustered = protos[labels][:, None, :].expand(8, 2, 8)
    assert float(supcon_loss(clustered, labels)) < float(loss.detach())


def test_wrong_shapes_raise():
    with pytest.raises(ValueError, match="batch, views, dim"):
        supcon_loss(torch.randn(8, 4))
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(_feats(4, 2, 3, 0), torch.arange(5))
    with pytest.raises(ValueError):
        supcon_loss(_feats(4, 2, 3, 0), torch.zeros(4, 1, dtype=torch.long))
