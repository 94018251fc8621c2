"""pcl.pruning: the GMP schedule, exact magnitude masks, and masks held during training."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pcl import pruning as P
from pcl.models import SupConNet, wide_resnet


def _wrn(seed=0):
    torch.manual_seed(seed)
    return wide_resnet(10, 1, 10)


def _weight_names(model):
    """Independent list of prunable tensors: the multi-dimensional parameters (conv/linear weights)."""
    return {n for n, p in model.named_parameters() if p.dim() > 1}


# --- schedule -----------------------------------------------------------------------------------
@pytest.mark.parametrize("step,expected", [
    (5, 0.0), (10, 0.0), (15, 0.9 * (1 - 0.5 ** 3)), (20, 0.9), (25, 0.9),
    (12, 0.9 * (1 - 0.8 ** 3)), (19, 0.9 * (1 - 0.1 ** 3))])
def test_gmp_sparsity_hand_points(step, expected):
    assert P.gmp_sparsity(step, 10, 20, 0.9) == pytest.approx(expected, abs=1e-12)
    assert P.gmp_sparsity(15, 10, 20, 0.9) == pytest.approx(0.7875, abs=1e-12)


def test_gmp_sparsity_monotone_and_ramps():
    vals = [P.gmp_sparsity(t, 0, 100, 0.95) for t in range(0, 120)]
    assert all(b >= a for a, b in zip(vals, vals[1:], strict=False))
    assert P.gmp_sparsity(25, 0, 100, 0.8, P.linear) == pytest.approx(0.2)  # hand-worked
    assert P.gmp_sparsity(50, 0, 100, 0.9, P.cubic) == pytest.approx(0.9 - 0.9 * 0.125)
    with pytest.raises(ValueError):
        P.gmp_sparsity(5, 10, 10, 0.9)


# --- masks --------------------------------------------------------------------------------------
def test_prunable_is_conv_and_linear_weights_only():
    m = _wrn()
    assert set(P.prunable(m)) == _weight_names(m)
    s = SupConNet(10, 1, 10, 16)
    assert set(P.prunable(s)) == _weight_names(s)
    enc = set(P.prunable(s, P.encoder_only))
    assert enc == {n for n in _weight_names(s) if n.startswith("net.") and n != "net.fc.weight"}
    assert set(P.prunable(m, P.head_only)) == {"fc.weight"}


@pytest.mark.parametrize("s", [0.3, 0.95])
def test_global_masks_drop_exactly_the_smallest(s):
    m = _wrn(1)
    masks = P.magnitude_masks(m, s, "global")
    assert set(masks) == _weight_names(m)  # no bias, no BN
    params = dict(m.named_parameters())
    entries = []  # (|w|, name, flat index) over all prunable tensors together
    for n in sorted(_weight_names(m)):
        for i, v in enumerate(params[n].detach().flatten().tolist()):
            entries.append((abs(v), n, i))
    entries.sort()
    k = round(s * len(entries))
    expected = {(n, i) for _, n, i in entries[:k]}
    dropped = {(n, int(i)) for n, mk in masks.items() for i in torch.nonzero(~mk.flatten()).flatten()}
    assert dropped == expected
    for n, mk in masks.items():
        assert mk.dtype == torch.bool and mk.shape == params[n].shape


@pytest.mark.parametrize("s", [0.5, 0.9])
def test_layerwise_masks_drop_round_s_n_per_tensor(s):
    m = _wrn(2)
    masks = P.magnitude_masks(m, s, "layerwise")
    assert set(masks) == _weight_names(m)
    for n, p in m.named_parameters():
        if n not in masks:
            continue
        vals = sorted((abs(v), i) for i, v in enumerate(p.detach().flatten().tolist()))
        k = round(s * p.numel())
        expected = {i for _, i in vals[:k]}
        got = set(torch.nonzero(~masks[n].flatten()).flatten().tolist())
        assert got == expected, n


def test_apply_masks_never_touches_bias_or_bn():
    m = _wrn(3)
    with torch.no_grad():  # non-trivial BN and bias values
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-1, 1)
        m.fc.bias.uniform_(-1, 1)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    masks = P.magnitude_masks(m, 0.9, "global")
    P.apply_masks(m, masks)
    for n, p in m.named_parameters():
        if p.dim() == 1:
            assert torch.equal(p, before[n]), n
        else:
            assert torch.equal(p == 0, ~masks[n]), n  # zero exactly where dropped
            assert torch.equal(p[masks[n]], before[n][masks[n]])  # kept weights unchanged


def test_already_zero_weights_are_dropped_first():
    lin = nn.Linear(20, 10, bias=False)
    with torch.no_grad():
        lin.weight.uniform_(-1e-6, 1e-6)  # tiny but non-zero
        lin.weight[lin.weight == 0] = 1e-7
        zero_idx = torch.randperm(200, generator=torch.Generator().manual_seed(0))[:60]
        lin.weight.view(-1)[zero_idx] = 0.0
        lin.weight.view(-1)[zero_idx[:30] + 0] = 0.0
    m = nn.Sequential(lin)
    masks = P.magnitude_masks(m, 0.3, "layerwise")  # drops exactly 60
    assert set(torch.nonzero(~masks["0.weight"].flatten()).flatten().tolist()) == set(zero_idx.tolist())
    # more zeros than the target drops: only zeros are dropped
    masks = P.magnitude_masks(m, 0.1, "global")
    assert set(torch.nonzero(~masks["0.weight"].flatten()).flatten().tolist()) <= set(zero_idx.tolist())


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("s", [0.37, 0.9])
def test_measured_sparsity_after_prune(scope, s):
    m = _wrn(4)
    P.apply_masks(m, P.magnitude_masks(m, s, scope))
    params = dict(m.named_parameters())
    zeros = {n: int((params[n] == 0).sum()) for n in _weight_names(m)}
    numel = {n: params[n].numel() for n in _weight_names(m)}
    if scope == "layerwise":
        for n in zeros:
            assert abs(zeros[n] - s * numel[n]) <= 1, n
    assert abs(sum(zeros.values()) - s * sum(numel.values())) <= len(zeros)
    # the module's own measures agree with the brute-force counts
    assert P.sparsity(m) == pytest.approx(sum(zeros.values()) / sum(numel.values()))
    ls = P.layer_sparsity(m)
    assert set(ls) == set(zeros) and all(ls[n] == pytest.approx(zeros[n] / numel[n]) for n in ls)


def test_bad_sparsity_and_scope():
    m = _wrn()
    for s in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            P.magnitude_masks(m, s)
        with pytest.raises(ValueError):
            P.Pruner(m, final=s)
    with pytest.raises(ValueError, match="'block'"):
        P.magnitude_masks(m, 0.5, "block")
    with pytest.raises(ValueError):
        P.Pruner.gmp(m, 0.9, 0.5, 0.5, 100)
    with pytest.raises(ValueError):
        P.Pruner.gmp(m, 0.9, 0.2, 1.2, 100)
    with pytest.raises(ValueError, match="prunable"):
        P.magnitude_masks(nn.Sequential(nn.BatchNorm2d(3)), 0.5)


# --- masks held during training -----------------------------------------------------------------
def _train(model, steps, hook=None, seed=0, size=8, batch=8):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for step in range(1, steps + 1):
        x = torch.randn(batch, 3, size, size, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hook is not None:
            hook(step)


@pytest.mark.parametrize("reapply", [True, False])
def test_zeros_survive_sgd_momentum_weight_decay(reapply):
    m = _wrn(5)
    masks = P.magnitude_masks(m, 0.7, "global")
    P.apply_masks(m, masks)
    pruner = P.Pruner(m, masks=masks)
    _train(m, 50, pruner.after_step if reapply else None)
    params = dict(m.named_parameters())
    revived = sum(int((params[n][~mk] != 0).sum()) for n, mk in masks.items())
    if reapply:
        assert revived == 0
        assert P.sparsity(m) == pytest.approx(round(0.7 * sum(mk.numel() for mk in masks.values()))
                                              / sum(mk.numel() for mk in masks.values()))
    else:  # control: without the hook momentum, gradients and weight decay revive pruned weights
        assert revived > 1000


def test_gmp_pruner_follows_schedule_and_masks_only_grow():
    m = _wrn(6)
    total, final, events = 120, 0.8, 10
    pruner = P.Pruner.gmp(m, final, 0.1, 0.6, total, events=events, scope="layerwise")
    begin, end = round(0.1 * total), round(0.6 * total)  # steps 12 .. 72
    names = sorted(_weight_names(m))
    params = dict(m.named_parameters())
    snapshots = []  # (step, {name: zero mask})
    prev_zero = {n: params[n] == 0 for n in names}

    def hook(step):
        n_before = len(pruner.events)
        pruner.after_step(step)
        zero = {n: (params[n] == 0).clone() for n in names}
        for n in names:  # zeros never come back, at events or between them
            assert torch.all(zero[n] | ~prev_zero[n]), (step, n)
        prev_zero.update(zero)
        if len(pruner.events) > n_before:
            snapshots.append((step, zero))

    _train(m, total, hook, size=8, batch=4)
    steps = [s for s, _ in snapshots]
    assert abs(len(steps) - events) <= 1
    assert steps[-1] == end and steps[0] > begin and all(begin < s <= end for s in steps)
    for step, zero in snapshots:
        frac = (step - begin) / (end - begin)
        target = final * (1 - (1 - frac) ** 3)  # the protocol's formula, s_i = 0
        for n in names:
            assert abs(int(zero[n].sum()) - target * zero[n].numel()) <= 1, (step, n)
    for (_, a), (_, b) in zip(snapshots, snapshots[1:], strict=False):
        for n in names:
            assert torch.all(b[n] | ~a[n])  # every weight zero at event j is zero at event j+1
    # after the window the final sparsity is held to the end
    for n in names:
        assert abs(int((params[n] == 0).sum()) - final * params[n].numel()) <= 1
    # the recorded events carry (step, target, measured)
    for (s, tgt, meas), s2 in zip(pruner.events, steps, strict=True):
        assert s == s2 and 0 < tgt <= final and abs(meas - tgt) < 0.01


def test_pruner_state_dict_round_trip():
    m = _wrn(7)
    p = P.Pruner.gmp(m, 0.5, 0.0, 0.5, 20, events=5)
    for step in range(1, 11):
        p.after_step(step)
    q = P.Pruner.gmp(m, 0.5, 0.0, 0.5, 20, events=5)
    q.load_state_dict(p.state_dict())
    assert q.events == p.events and set(q.masks) == set(p.masks)
    assert all(torch.equal(q.masks[n], p.masks[n]) for n in p.masks)


def test_gmp_event_ranks_previously_pruned_weights_first():
    """At an event right after an optimiser step, weights pruned earlier hold non-zero values
    (the step, momentum, moved them; masks are re-applied only after it). They must still count
    as pruned: the event drops exactly round(target * n) weights, never more."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10, bias=False))
    w = m[0].weight
    pruner = P.Pruner(m, final=0.5, begin_step=0, end_step=2, every=1)
    pruner.after_step(1)  # target 0.5 * (1 - 0.5**3) = 0.4375 -> 44 of 100 dropped
    assert int((w == 0).sum()) == 44
    first = (w == 0).clone()
    with torch.no_grad():  # what an SGD step with momentum does to the masked weights
        w[first] = 1.0 + torch.rand(44)  # larger than every kept weight
    pruner.after_step(2)  # target 0.5 -> 50 of 100
    assert torch.all(w[first] == 0)  # masks only grow
    assert int((w == 0).sum()) == 50  # exactly round(0.5 * 100), as the protocol asks
