"""What only a CUDA GPU can check (``make gpu-check`` runs these; skipped without CUDA).

* augmentation on CUDA equals the CPU result for the same random parameters;
* a bf16 training step runs, and its loss matches fp32 within tolerance;
* two runs with the same seed give identical weights (``pcl.determinism``, recorded in env.json);
* the k-NN on CUDA equals the CPU result (exactly: both are the exact k-NN);
* evaluation outputs are float32, computed at float32 precision (not bf16, not TF32).
"""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any test's first cuBLAS call

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


class RandomTape:
    """Stands in for the ``torch`` module inside ``pcl.augment``: records every random draw on
    the first (CPU) pass and replays the same values on the second (CUDA) pass."""

    def __init__(self) -> None:
        self.tape: list[torch.Tensor] = []
        self.replay: list[torch.Tensor] | None = None

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def _draw(self, fn, *args, device=None, generator=None, **kw) -> torch.Tensor:
        if self.replay is None:
            out = fn(*args, device=device, generator=generator, **kw)
            self.tape.append(out.cpu())
            return out
        return self.replay.pop(0).to(device)

    def rand(self, *args, **kw) -> torch.Tensor:
        return self._draw(torch.rand, *args, **kw)

    def randint(self, *args, **kw) -> torch.Tensor:
        return self._draw(torch.randint, *args, **kw)


@pytest.mark.parametrize("pipeline", ["ce", "ce_vflip", "supcon"])
def test_augmentation_cuda_equals_cpu_for_the_same_random_parameters(monkeypatch, pipeline):
    from pcl import augment

    tape = RandomTape()
    monkeypatch.setattr(augment, "torch", tape)
    fn = {"ce": lambda x, g: augment.ce_augment(x, g, False),
          "ce_vflip": lambda x, g: augment.ce_augment(x, g, True),
          "supcon": augment.supcon_augment}[pipeline]
    x = _images(64)
    on_cpu = fn(x, torch.Generator().manual_seed(1))
    assert tape.tape, "the augmentation drew no random numbers through pcl.augment.torch"
    tape.replay = list(tape.tape)
    on_cuda = fn(x.to(CUDA), torch.Generator(device=CUDA).manual_seed(1))
    assert tape.replay == [], "CUDA drew a different number of random tensors than the CPU"
    assert on_cuda.dtype == on_cpu.dtype == torch.float32
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ce", "supcon"])
def test_bf16_training_step_runs_and_matches_fp32(method):
    from pcl.methods import ce_loss_fn, supcon_loss_fn
    from pcl.models import SupConNet, wide_resnet

    torch.manual_seed(0)
    base = (wide_resnet(16, 2, 10) if method == "ce" else SupConNet(16, 2, 10, 128)).to(CUDA)
    base = base.to(memory_format=torch.channels_last).train()
    x = _images(128).to(CUDA)
    y = torch.arange(128, device=CUDA) % 10
    losses = {}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(base)
        if method == "ce":
            loss_fn = ce_loss_fn(model, CUDA, False, precision)
        else:
            loss_fn = supcon_loss_fn(model, CUDA, 0.5, 0.07, precision)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss = loss_fn(x, y, torch.Generator(device=CUDA).manual_seed(3))
        assert loss.dtype == torch.float32
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())
        losses[precision] = float(loss.detach())
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)


@pytest.mark.parametrize("method", ["ce", "supcon"])
def test_two_runs_with_one_seed_give_identical_weights(tmp_path, method):
    from pcl.config import RunConfig
    from pcl.store import RunStore
    from pcl.train import train_run

    cfg = RunConfig(method=method, dataset="synthetic", synthetic_size=256, depth=10, width=1,
                    epochs=2, batch_size=64, head_epochs=1, head_batch_size=64, precision="bf16")
    a = train_run(cfg, RunStore(tmp_path / "a"), device=CUDA, progress=False)["state"]
    b = train_run(cfg, RunStore(tmp_path / "b"), device=CUDA, progress=False)["state"]
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"same config and seed, different weights in {differ[:5]}"
    env = json.loads((RunStore(tmp_path / "a").path(cfg) / "env.json").read_text())
    assert env["cudnn_deterministic"] and env["deterministic_algorithms"] == "warn"
    assert env["cublas_workspace_config"] == ":4096:8"


def test_knn_on_cuda_equals_cpu():
    from pcl import knn

    g = torch.Generator().manual_seed(0)
    ints = torch.randint(0, 3, (600, 3), generator=g).float()  # many exact ties
    dup = torch.randn(800, 32, generator=g)
    dup[400:500] = dup[:100]
    cases = [(torch.randn(3000, 128, generator=g), torch.randn(500, 128, generator=g), 30),
             (ints[:500], ints[500:], 5), (dup, torch.randn(200, 32, generator=g), 30)]
    old = torch.get_float32_matmul_precision()
    try:
        for precision in ("highest", "high"):  # "high" lets float32 matmuls use TF32
            torch.set_float32_matmul_precision(precision)
            for tr, te, k in cases:
                cpu = knn.knn_neighbours(tr, te, k)
                cuda = knn.knn_neighbours(tr.to(CUDA), te.to(CUDA), k)
                assert torch.equal(cuda.cpu(), cpu)
                y = torch.arange(len(tr)) % 10
                assert (knn.knn_predict(tr, y, te, k=k, device=CUDA)
                        == knn.knn_predict(tr, y, te, k=k, device=CPU)).all()
    finally:
        torch.set_float32_matmul_precision(old)


def test_evaluation_outputs_are_fp32():
    """float32 tensors, and float32 precision: the CUDA logits, features and probe taps equal the
    CPU's to 1e-4 (bf16 or TF32 arithmetic is off by about 1e-3 to 1e-2)."""
    from pcl.evaluate import tap_features
    from pcl.models import wide_resnet
    from pcl.train import predict

    torch.manual_seed(0)
    net = wide_resnet(16, 2, 10).to(memory_format=torch.channels_last).eval()
    x = _images(200, seed=1)
    cpu = predict(net, x, CPU)
    cuda = predict(copy.deepcopy(net).to(CUDA), x, CUDA)
    for a, b in zip(cuda, cpu, strict=True):
        assert a.dtype == torch.float32 and a.device == CPU
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    taps_cpu = tap_features(net, x[:50], CPU)
    taps_cuda = tap_features(copy.deepcopy(net).to(CUDA), x[:50], CUDA)
    for a, b in zip(taps_cuda, taps_cpu, strict=True):
        assert a.dtype == torch.float32 and a.device == CPU
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
