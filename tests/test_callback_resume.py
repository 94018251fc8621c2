"""Any stateful training callback resumes through the checkpoint (state_dict/load_state_dict).

The callback here never prunes: it perturbs one weight after every step with noise from its own
generator, so its state (the generator and a step count) changes the weights. Killed after the
first epoch and resumed, the run must end with the weights of an uninterrupted run, bit for bit;
a callback whose state is not restored would redraw the noise from the start and differ.
"""
from __future__ import annotations

import torch

from pcl import train as TR
from pcl.presets import get_preset
from pcl.store import RunStore

SMOKE = get_preset("smoke", dataset="synthetic", synthetic_size=64)
CFG = SMOKE.run("ce", 0, epochs=3)


class Jitter:
    """Adds its own seeded noise to the first conv after every step; stateful, never prunes."""

    def __init__(self, model_ref: dict) -> None:
        self.ref, self.gen, self.steps = model_ref, torch.Generator().manual_seed(7), 0

    def after_step(self, step: int) -> None:
        self.steps += 1
        w = next(self.ref["net"].parameters())
        with torch.no_grad():
            w.add_(1e-3 * torch.randn(w.shape, generator=self.gen).to(w))

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.steps = state["steps"]


def _train(store: RunStore, jitter: Jitter, monkeypatch) -> dict:
    real = TR.build_phase

    def build(cfg, spec, model, net, train, device):  # hand the callback the run's network
        jitter.ref["net"] = net
        return real(cfg, spec, model, net, train, device)

    monkeypatch.setattr(TR, "build_phase", build)
    return TR.train_run(CFG, store, device="cpu", progress=False, threads=1, callbacks=(jitter,))


def test_killed_and_resumed_stateful_callback_gives_identical_weights(tmp_path, monkeypatch):
    ref = _train(RunStore(tmp_path / "ref"), Jitter({}), monkeypatch)["state"]
    store, real = RunStore(tmp_path / "resumed"), RunStore.save_checkpoint
    calls = {"n": 0}

    def save_then_die(self, cfg, state):
        if calls["n"] >= 1:
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint
        calls["n"] += 1
        real(self, cfg, state)

    monkeypatch.setattr(RunStore, "save_checkpoint", save_then_die)
    first = Jitter({})
    try:
        _train(store, first, monkeypatch)
    except KeyboardInterrupt:
        pass
    assert not store.is_done(CFG) and first.steps > 0
    monkeypatch.setattr(RunStore, "save_checkpoint", real)
    fresh = Jitter({})  # a new process: the callback starts from scratch unless restored
    got = _train(store, fresh, monkeypatch)["state"]
    assert fresh.steps == 3 * (first.steps // 2)  # killed after epoch 2, resumed from epoch 1
    assert all(torch.equal(got[k], ref[k]) for k in ref)
