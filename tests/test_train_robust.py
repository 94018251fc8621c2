"""Runs that go wrong are never stored as finished; thread count, precision and env are recorded."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import pcl.train as TR
from pcl.augment import eval_transform
from pcl.models import channels_last
from pcl.presets import get_preset
from pcl.store import RunStore

SMOKE = get_preset("smoke", dataset="synthetic")
CE = SMOKE.run("ce", 0)


def _train(cfg, store, **kw):
    return TR.train_run(cfg, store, device="cpu", progress=False, **kw)


@pytest.mark.parametrize("cfg", [
    replace(CE, lr=1e30),  # overflows to inf within a step or two
    replace(SMOKE.run("supcon", 0), base_temperature=1e-40),  # the loss scale overflows fp32
], ids=["ce-lr-overflow", "supcon-base-temperature"])
def test_non_finite_loss_stops_run_and_leaves_it_unfinished(cfg, tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(TR.DivergedError, match=rf"run {cfg.run_hash()}.*epoch 1, step \d+"):
        _train(cfg, store)
    assert not store.is_done(cfg)
    assert not (store.path(cfg) / "checkpoint.pt").exists()  # the diverged epoch is not kept


@pytest.mark.parametrize("kw, what", [
    ({"base_temperature": 1e-8}, r"exploding \(> 1e\+06\) loss 2\.\d+e\+08 in phase 'train', epoch 1, "
                                 r"step 1 "),
    ({"temperature": 1e-8}, r"temperature 1e-08 makes logits up to 1/temperature = 1e\+08"),
], ids=["base-temperature", "temperature"])
def test_finite_blow_up_is_divergence_not_a_finished_run(kw, what, tmp_path):
    """Finite but meaningless SupCon runs: before pcl.divergence both were stored as DONE (loss
    ~2.4e8 and weights ~1e18; chance accuracy at a small loss)."""
    cfg = replace(SMOKE.run("supcon", 0), **kw)
    store = RunStore(tmp_path)
    with pytest.raises(TR.DivergedError, match=rf"run {cfg.run_hash()}.*{what}"):
        _train(cfg, store)
    assert not store.is_done(cfg) and not (store.path(cfg) / "checkpoint.pt").exists()


def test_exploding_weights_with_a_finite_loss_are_divergence():
    """Hand-made epoch: a sane loss stream, but weights 2,000 x their norm at the phase start."""
    from pcl.divergence import check_epoch

    w = [torch.full((4,), 0.5)]  # norm 1
    assert check_epoch(torch.tensor([2.3, 2.2]), w, norm0=1.0) is None
    assert check_epoch(torch.tensor([2.3, 2e6]), w, 1.0) == (1, "exploding (> 1e+06) loss 2e+06")
    assert check_epoch(torch.tensor([float("nan"), 1.0]), w, 1.0)[0] == 0
    w[0].mul_(2000)
    step, what = check_epoch(torch.tensor([2.3, 2.2]), w, norm0=1.0)
    assert step == 1 and "exploding weights (parameter norm 2e+03" in what
    assert check_epoch(torch.tensor([2.3, 2.2]), w, norm0=3.0) is None  # 2000/3 < 1000-fold


def test_divergence_names_the_first_bad_step(tmp_path, monkeypatch):
    """A loss that turns NaN at step 3 of epoch 1 is reported as step 3 (hand-made loss stream)."""
    import pcl.methods as M

    real = M.ce_loss_fn
    n = {"i": 0}

    def fake(*a, **kw):
        fn = real(*a, **kw)

        def loss(x, y, g):
            n["i"] += 1
            out = fn(x, y, g)
            return out * float("nan") if n["i"] == 3 else out
        return loss

    monkeypatch.setattr(M, "ce_loss_fn", fake)  # the CE phase looks it up when it is built
    with pytest.raises(TR.DivergedError, match=r"epoch 1, step 3 "):
        _train(CE, RunStore(tmp_path))


def test_thread_count_is_pinned_recorded_and_restored(tmp_path):
    before = torch.get_num_threads()
    seen = []

    class Probe:
        def after_epoch(self, phase, epoch, row):
            seen.append((phase, epoch, torch.get_num_threads()))

    store = RunStore(tmp_path)
    _train(CE, store, threads=1, callbacks=[Probe()])
    assert seen == [("train", 1, 1), ("train", 2, 1)]
    assert torch.get_num_threads() == before
    env = json.loads((store.path(CE) / "env.json").read_text())
    assert env["threads"] == 1 and env["precision"] == CE.precision == "fp32"
    assert env["torch"] == torch.__version__ and env["wall_seconds"] > 0
    assert "env.json" in json.loads((store.path(CE) / "DONE").read_text())


def test_resume_uses_the_recorded_thread_count(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    real = RunStore.save_checkpoint

    def stop(self, cfg, state):
        real(self, cfg, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunStore, "save_checkpoint", stop)
    with pytest.raises(KeyboardInterrupt):
        _train(CE, store, threads=1)
    monkeypatch.setattr(RunStore, "save_checkpoint", real)
    seen = []

    class Probe:
        def after_epoch(self, phase, epoch, row):
            seen.append(torch.get_num_threads())

    _train(CE, store, threads=2, callbacks=[Probe()])  # asks for 2, the checkpoint says 1
    assert seen == [1]
    assert json.loads((store.path(CE) / "env.json").read_text())["threads"] == 1


def test_bf16_training_keeps_fp32_evaluation(tmp_path):
    """bf16 autocast trains; test logits and features are computed and stored in float32."""
    cfg = replace(CE, precision="bf16")
    assert cfg.run_hash() != CE.run_hash()
    store = RunStore(tmp_path)
    r = _train(cfg, store)
    logits = store.load_logits(cfg)
    assert logits.dtype == torch.float32 and store.load_features(cfg).dtype == torch.float32
    # the stored logits are the fp32 forward of the stored weights, not a bf16-rounded one
    net = TR.load_model(cfg, store)
    from pcl.data import load_for_config

    data = load_for_config(cfg)
    with torch.no_grad():
        expect = net(channels_last(eval_transform(data.test.images))).float()
    assert torch.allclose(logits, expect, atol=1e-5, rtol=1e-5)
    assert json.loads((store.path(cfg) / "env.json").read_text())["precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in r["history"]["epochs"])
