"""pcl.models: the pre-activation WRN's size, structure, taps and the SupCon wrapper."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from pcl import augment
from pcl.config import RunConfig
from pcl.methods import get as get_method
from pcl.models import SupConNet, WideResNet, wide_resnet


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hand_count(depth: int, width: int, classes: int) -> int:
    """Parameter count worked out from the protocol's description, block by block."""
    n = (depth - 4) // 6
    total = 3 * 16 * 9  # stem conv, no bias
    cin = 16
    for cout, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
        for b in range(n):
            c_in = cin if b == 0 else cout
            total += 2 * c_in + c_in * cout * 9 + 2 * cout + cout * cout * 9  # bn1 conv1 bn2 conv2
            if c_in != cout or (b == 0 and stride != 1):
                total += c_in * cout  # 1x1 shortcut
        cin = cout
    return total + 2 * cin + cin * classes + classes  # final BN, linear classifier


def test_wrn_16_2_has_691674_parameters():
    m = wide_resnet(16, 2, 10)
    assert count_parameters(m) == 691_674
    assert sum(p.numel() for p in m.parameters()) == 691_674
    assert _hand_count(16, 2, 10) == 691_674
    assert m.feature_dim == 128


@pytest.mark.parametrize("depth,width", [(10, 1), (22, 1), (16, 4)])
def test_other_sizes_match_hand_count(depth, width):
    assert count_parameters(wide_resnet(depth, width, 10)) == _hand_count(depth, width, 10)


@pytest.mark.parametrize("depth", [12, 8, 4, 17])
def test_bad_depth_raises(depth):
    with pytest.raises(ValueError, match=str(depth)):
        wide_resnet(depth, 1)


def test_structure_no_conv_bias_shortcuts_and_init():
    torch.manual_seed(0)
    m = wide_resnet(16, 2, 10)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    # shortcuts only where width or stride changes: first block of each group for WRN-16-2
    sc = [b.shortcut is not None for g in m.groups for b in g]
    assert sc == [True, False, True, False, True, False]
    strides = [g[0].conv1.stride[0] for g in m.groups]
    assert strides == [1, 2, 2]
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
    # Kaiming normal, fan_out, ReLU: std = sqrt(2 / (out_channels * k * k))
    w = m.groups[2][1].conv2.weight.detach()  # 128x128x3x3: 147,456 samples
    expected = math.sqrt(2.0 / (128 * 9))
    assert abs(float(w.std()) / expected - 1) < 0.02
    assert abs(float(w.mean())) < 0.01 * expected * 10


def test_forward_shapes_and_taps():
    torch.manual_seed(0)
    m = wide_resnet(10, 1, 10).eval()
    x = torch.randn(3, 3, 32, 32)
    names = m.tap_names()
    assert len(names) == 12  # stem + 3 blocks x (pre, mid, out) + penultimate + logits
    assert names[0] == "stem" and names[-2:] == ["penultimate", "logits"]
    with torch.no_grad():
        taps = m.forward_taps(x)
        feats, logits = m.features(x), m(x)
    assert len(taps) == len(names)
    assert all(t.dim() == 2 and t.shape[0] == 3 for t in taps)
    torch.testing.assert_close(taps[-2], feats, rtol=0, atol=0)
    torch.testing.assert_close(taps[-1], logits, rtol=0, atol=0)
    assert feats.shape == (3, 64) and logits.shape == (3, 10)
    # tap widths: 'pre' is the block input (previous width), 'mid'/'out' the block's width
    widths = [t.shape[1] for t in taps]
    assert widths == [16, 16, 16, 16, 16, 32, 32, 32, 64, 64, 64, 10]
    # the stem tap is the pooled stem conv output (hand computed)
    torch.testing.assert_close(taps[0], m.stem(x).mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)


def test_wrn_16_2_tap_count_is_21():
    assert len(wide_resnet(16, 2).tap_names()) == 21


def test_logits_are_fc_of_features():
    torch.manual_seed(1)
    m = wide_resnet(10, 1).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = m.features(x)
        ref = f @ m.fc.weight.T + m.fc.bias
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-6)


def test_supcon_project_unit_norm_and_dims():
    torch.manual_seed(2)
    m = SupConNet(10, 1, 10, proj_dim=32).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        z = m.project(x)
        out = m(x)
    assert z.shape == (5, 32)
    norms = torch.sqrt((z.double() ** 2).sum(1))
    torch.testing.assert_close(norms, torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)
    assert out.shape == (5, 10)
    # head: Linear(f, f) -> ReLU -> Linear(f, proj)
    lin = [mod for mod in m.head if isinstance(mod, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(64, 64), (64, 32)]
    assert isinstance(m.head[1], nn.ReLU)


def test_build_model_by_method():
    ce = get_method("ce").build(RunConfig(method="ce", depth=10, width=1))
    sc = get_method("supcon").build(RunConfig(method="supcon", depth=10, width=1, proj_dim=16))
    assert type(ce) is WideResNet and isinstance(sc, SupConNet)
    assert sc.head[-1].out_features == 16 and sc.net.depth == 10


def test_eval_forward_is_batch_size_invariant_and_shared_by_predict_and_taps():
    """predict (logits, features) and the probe taps come from one loop: any batch size gives the
    one-pass result, and the taps' last two are the features and the logits."""
    from pcl.evaluate import tap_features
    from pcl.models import channels_last, eval_forward
    from pcl.train import predict

    torch.manual_seed(3)
    net = wide_resnet(10, 1).eval()
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    logits, feats = predict(net, images, "cpu", batch_size=3)
    with torch.no_grad():
        x = channels_last(augment.eval_transform(images))
        torch.testing.assert_close(feats, net.features(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits, net(x), rtol=1e-5, atol=1e-6)
    taps = tap_features(net, images, "cpu", batch_size=2)
    assert len(taps) == len(net.tap_names())
    torch.testing.assert_close(taps[-2], feats, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(taps[-1], logits, rtol=1e-5, atol=1e-6)
    one = eval_forward(net, images, "cpu", lambda x: (net.features(x),), batch_size=100)[0]
    torch.testing.assert_close(one, feats, rtol=1e-5, atol=1e-6)
