"""GPU speed options on CPU: a compiled network and cuDNN autotuning change nothing but float noise,
are recorded in env.json, and reach training through every executor; workers per GPU."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import pcl.executors as EX
import pcl.train as TR
from pcl.presets import get_preset
from pcl.store import RunStore

SMOKE = get_preset("smoke", dataset="synthetic")
CE = replace(SMOKE.run("ce", 0), epochs=1)  # one epoch of 3 steps on 200 synthetic images


def _env(store: RunStore, cfg) -> dict:
    return json.loads((store.path(cfg) / "env.json").read_text())


def test_compile_plumbing_trains_compiled_evaluates_eager(tmp_path, monkeypatch):
    """With torch.compile replaced by a recorder: every training forward goes through the compiled
    trunk, evaluation does not, the weights are the eager run's exactly, env.json says so, and the
    global cuDNN flag is restored."""
    eager = TR.train_run(CE, RunStore(tmp_path / "eager"), device="cpu", progress=False)
    calls = []

    def fake_compile(fn):
        def compiled(x, *a, **k):
            calls.append(torch.is_grad_enabled())
            return fn(x, *a, **k)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    before = torch.backends.cudnn.benchmark
    store = RunStore(tmp_path / "compiled")
    res = TR.train_run(CE, store, device="cpu", progress=False, compile=True, cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark == before
    steps = len(res["history"]["epochs"]) * 3
    assert calls == [True] * steps  # training steps only: predict ran the eager trunk
    assert eager["state"].keys() == res["state"].keys()
    assert all(torch.equal(eager["state"][k], res["state"][k]) for k in eager["state"])
    env = _env(store, CE)
    assert env["compile"] is True and env["cudnn_benchmark"] is True
    env0 = _env(RunStore(tmp_path / "eager"), CE)
    assert env0["compile"] is False and env0["cudnn_benchmark"] is False


@pytest.mark.slow
def test_compiled_run_matches_eager_up_to_float_noise(tmp_path):
    """The real torch.compile (inductor on CPU): same run, same result up to rounding."""
    eager = TR.train_run(CE, RunStore(tmp_path / "eager"), device="cpu", progress=False)
    store = RunStore(tmp_path / "compiled")
    comp = TR.train_run(CE, store, device="cpu", progress=False, compile=True)
    assert _env(store, CE)["compile"] is True
    a, b = eager["state"], comp["state"]
    assert a.keys() == b.keys()  # the stored state dict keeps the eager names
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4), k
    la = RunStore(tmp_path / "eager").load_logits(CE)
    lb = store.load_logits(CE)
    assert torch.allclose(la, lb, rtol=1e-3, atol=1e-3)
    assert abs(eager["test_acc"] - comp["test_acc"]) <= 0.01
    eh = [r["loss"] for r in eager["history"]["epochs"]]
    ch = [r["loss"] for r in comp["history"]["epochs"]]
    assert ch == pytest.approx(eh, rel=1e-4)


# --- executors pass the options on -------------------------------------------------------------
def test_check_options_accepts_and_rejects_speed_options():
    opts = EX.check_options("local", {"cudnn_benchmark": True, "compile": False, "workers_per_gpu": 4})
    assert opts == {"cudnn_benchmark": True, "compile": False, "workers_per_gpu": 4}
    assert EX.check_options("slurm", {"compile": True})["compile"] is True
    for bad in ({"compile": "yes"}, {"cudnn_benchmark": 1}, {"workers_per_gpu": 0},
                {"workers_per_gpu": 1.5}, {"workers_per_gpu": True}):
        (k, v), = bad.items()
        with pytest.raises(ValueError, match=k) as ei:
            EX.check_options("local", bad)
        assert repr(v) in str(ei.value)
    with pytest.raises(ValueError, match="workers_per_gpu"):  # one job per run: no workers to share
        EX.check_options("slurm", {"workers_per_gpu": 2})


def test_task_options_defaults_off():
    assert EX.task_options({}) == {"device": None, "threads": None, "cudnn_benchmark": False,
                                   "compile": False}
    assert EX.task_options({"compile": True, "threads": 2})["compile"] is True


def test_train_leased_and_train_job_pass_the_options(tmp_path, monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def fake_train_run(cfg, store, **kw):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(TR, "train_run", fake_train_run)
    with pytest.raises(Stop):
        EX.train_leased(CE, tmp_path / "s", cudnn_benchmark=True, compile=True)
    assert seen[-1]["cudnn_benchmark"] is True and seen[-1]["compile"] is True
    job = EX.TrainJob(CE.to_dict(), str(tmp_path / "s2"), None, "cpu", 1, 60.0, True, False)
    with pytest.raises(Stop):
        job()
    assert seen[-1]["cudnn_benchmark"] is True and seen[-1]["compile"] is False
    assert seen[-1]["threads"] == 1 and seen[-1]["device"] == "cpu"
    with pytest.raises(Stop):
        EX.train_leased(CE, tmp_path / "s3")
    assert seen[-1]["cudnn_benchmark"] is False and seen[-1]["compile"] is False


# --- workers per GPU ------------------------------------------------------------------------------
@pytest.mark.parametrize("workers, n_gpus, per_gpu, expect", [
    (4, 0, 1, 4),   # CPU: workers as asked
    (4, 1, 1, 1),   # one GPU, default: one run at a time on it
    (4, 1, 3, 3),   # three share it
    (4, 2, 1, 2),
    (3, 2, 4, 3),   # never more than asked
    (1, 8, 2, 1),
])
def test_local_workers(workers, n_gpus, per_gpu, expect):
    assert EX.local_workers(workers, n_gpus, per_gpu) == expect


def test_pick_gpu_fills_the_least_used():
    gpus = ["0", "1", "2"]
    taken: list = []
    for _ in range(6):  # 6 workers on 3 GPUs: 2 each, round-robin order
        taken.append(EX.pick_gpu(gpus, taken))
    assert taken == ["0", "1", "2", "0", "1", "2"]
    # a worker on GPU 1 died: its replacement goes there
    assert EX.pick_gpu(gpus, ["0", "2", "0", "1", "2"]) == "1"
    assert EX.pick_gpu(["0"], ["0", "0"]) is None and EX.pick_gpu([], []) is None
