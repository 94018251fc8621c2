"""The training loop (:func:`fit` of one :class:`Phase`) and ``train_run`` (one whole run): it runs
the phases a run's method and schedule declare (docs/ARCHITECTURE.md, "The path of a run config")
airbench style (README.md, "Speed"), with per-epoch seeds and pinned threads so that a resumed run
is bit-identical to an uninterrupted one (README.md, "Reproducibility promise")."""
from __future__ import annotations

import functools
import math
import os
import platform
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch
import torch.nn as nn

from . import __version__, provenance
from .config import RunConfig, resolve_device
from .data import Dataset, Split, load_for_config
from .determinism import CudaDeterminism
from .divergence import DivergedError, check_config, check_epoch, param_norm
from .methods import LossFn, Optim, PhaseSpec
from .methods import get as get_method
from .models import WideResNet, eval_forward
from .pruning import Pruner, sparsity
from .schedules import get as get_schedule
from .store import RunStore


def lr_at(step: int, total: int, base: float, schedule: str, milestones=()) -> float:
    """Learning rate before optimiser step ``step`` (0-based) of ``total``."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if schedule == "step":
        return base * 0.1 ** sum(step >= m * total for m in milestones)
    raise ValueError(f"unknown lr schedule {schedule!r}; allowed: constant, cosine, step")


class Callback(Protocol):
    """The one hook protocol of training; every method is optional. ``after_step(step)``: after
    every optimiser step (``step`` counts from 1 within the phase; pruning lives here).
    ``after_epoch(phase, epoch, row)``: after every epoch (``row``: its history row; checkpointing
    and progress live here). ``after_run(summary)``: once, when ``train_run`` has stored the run."""

    def after_step(self, step: int) -> None: ...
    def after_epoch(self, phase: str, epoch: int, row: dict) -> None: ...
    def after_run(self, summary: dict) -> None: ...


@dataclass
class Phase:
    """One optimisation phase of a run, with everything it owns: its SGD settings and length, the
    parameters it updates, its loss, its train-mode setter and its callbacks (in call order)."""

    name: str
    optim: Optim
    params: list
    loss_fn: LossFn
    train_mode: Callable[[], None]
    callbacks: list = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None  # set by fit (checkpointing reads it)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only (a last partial batch is dropped); one batch if n < batch_size."""
    return max(1, n // batch_size)


def _seed(*parts: int) -> int:
    return functools.reduce(lambda h, p: (h * 1_000_003 + int(p)) % (2 ** 62), parts, 0)


def fit(phase: Phase, split: Split, seed: int, phase_id: int, device: torch.device,
        start_epoch: int = 0, opt_state: dict | None = None, run_name: str = "") -> list[dict]:
    """Run the phase's epochs of SGD on ``split`` (already on ``device``), from ``start_epoch``.

    ``phase.loss_fn(x_uint8, y, generator)`` augments and returns the loss; the callbacks
    (:class:`Callback`) run in the phase's order. A loss or weights that blow up
    (:mod:`pcl.divergence`) raise :class:`DivergedError` at the end of their epoch, before any
    ``after_epoch`` (so before that epoch is checkpointed).
    """
    o = phase.optim
    opt = torch.optim.SGD(phase.params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                          nesterov=o.nesterov)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    phase.optimizer = opt
    after_step = [cb.after_step for cb in phase.callbacks if hasattr(cb, "after_step")]
    after_epoch = [cb.after_epoch for cb in phase.callbacks if hasattr(cb, "after_epoch")]
    n = len(split)
    spe, bs = steps_per_epoch(n, o.batch_size), min(o.batch_size, n)
    rows, norm0 = [], param_norm(phase.params)
    for epoch in range(start_epoch, o.epochs):
        phase.train_mode()
        t0 = time.perf_counter()
        gen_cpu = torch.Generator().manual_seed(_seed(seed, phase_id, epoch, 1))
        gen_dev = torch.Generator(device=device).manual_seed(_seed(seed, phase_id, epoch, 2))
        perm = torch.randperm(n, generator=gen_cpu).to(device)
        losses = torch.zeros(spe, device=device)  # checked once per epoch: no per-step sync
        for i in range(spe):
            step = epoch * spe + i
            for gparam in opt.param_groups:
                gparam["lr"] = lr_at(step, spe * o.epochs, o.lr, o.schedule, o.milestones)
            idx = perm[i * bs:(i + 1) * bs]
            loss = phase.loss_fn(split.images[idx], split.labels[idx], gen_dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for cb in after_step:
                cb(step + 1)
            losses[i] = loss.detach()
        if diverged := check_epoch(losses, phase.params, norm0):  # pcl.divergence: the criterion
            i, what = diverged
            raise DivergedError(f"{run_name or 'run'}: {what} in phase "
                                f"{phase.name!r}, epoch {epoch + 1}, step {epoch * spe + i + 1} "
                                f"(step {i + 1} of the epoch); the run is not marked finished. "
                                "Check the learning rate and temperature.")
        row = {"phase": phase.name, "epoch": epoch + 1, "loss": float(losses.mean()),
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
               "images": spe * bs}
        rows.append(row)
        for cb in after_epoch:
            cb(phase.name, epoch + 1, row)
    return rows


def build_phase(cfg: RunConfig, spec: PhaseSpec, model: nn.Module, net: WideResNet, train: Split,
                device: torch.device) -> Phase:
    """The :class:`Phase` a method's phase spec describes, with its schedule's callbacks
    (pruning) first in its callback list."""
    o = spec.optim(cfg)
    mode = (lambda: spec.train_mode(model, net)) if spec.train_mode is not None else model.train
    phase = Phase(spec.name, o, spec.params(model, net), spec.loss(model, net, cfg, device), mode)
    total = steps_per_epoch(len(train), o.batch_size) * o.epochs
    phase.callbacks += get_schedule(cfg.pruning).callbacks(cfg, spec, model, net, total)
    return phase


def predict(net: WideResNet, images: torch.Tensor, device: torch.device | str,
            batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time (logits, penultimate features), float32 on the CPU (:func:`pcl.models.eval_forward`)."""
    def logits_and_features(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = net.features(x)
        return net.fc(f), f

    return tuple(eval_forward(net, images, device, logits_and_features, batch_size))


# ------------------------------------------------------------------------------------------------
def run_env(cfg: RunConfig, device: torch.device, threads: int, cudnn_benchmark: bool = False,
            compile: bool = False) -> dict:
    """Where and how a run trained (kept outside the config hash): versions, device, threads and
    the speed options, which change results only by floating-point noise."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"pcl_version": __version__, "git_revision": rev,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                       else platform.processor() or platform.machine()),
            "device_type": device.type, "precision": cfg.precision, "threads": threads,
            **CudaDeterminism(device, cudnn_benchmark).record(), "compile": bool(compile),
            "host": socket.gethostname(), "machine": provenance.machine(device)}


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Pin torch's intra-op thread count for one training, restoring it afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _stateful(callbacks: list) -> list:
    """The callbacks with state (``state_dict``/``load_state_dict``), in the phase's order."""
    return [cb for cb in callbacks if callable(getattr(cb, "state_dict", None))
            and callable(getattr(cb, "load_state_dict", None))]


class _Checkpoint:
    """``after_epoch``: measure sparsity into the row, keep the history and pruning events, and
    save the checkpoint a resume starts from (model, optimiser, every stateful callback, threads)."""

    def __init__(self, cfg: RunConfig, store: RunStore, model: nn.Module, net: WideResNet,
                 phase: Phase, history: list, events: dict, threads: int) -> None:
        self.cfg, self.store, self.model, self.net, self.phase = cfg, store, model, net, phase
        self.history, self.events, self.threads = history, events, threads

    def after_epoch(self, phase: str, epoch: int, row: dict) -> None:
        row["sparsity"] = sparsity(self.net)
        self.history.append(row)
        pruner = next((cb for cb in self.phase.callbacks if isinstance(cb, Pruner)), None)
        if pruner is not None:
            self.events[phase] = pruner.events
        self.store.save_checkpoint(self.cfg, {
            "phase": phase, "epoch": epoch, "model": self.model.state_dict(),
            "opt": self.phase.optimizer.state_dict(), "history": self.history,
            "callbacks": [cb.state_dict() for cb in _stateful(self.phase.callbacks)],
            "events": self.events, "threads": self.threads})


class _Progress:
    """``after_epoch``: advance a tqdm bar by one epoch."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def after_epoch(self, phase: str, epoch: int, row: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(phase=phase, loss=f"{row['loss']:.3f}", refresh=False)


def train_run(cfg: RunConfig, store: RunStore | None = None, data: Dataset | None = None,
              data_root: str | None = None, device: torch.device | str | None = None,
              progress: bool = True, threads: int | None = None, callbacks: tuple = (),
              cudnn_benchmark: bool = False, compile: bool = False) -> dict:
    """Train (or load) the run ``cfg`` describes and return its summary.

    A finished run in ``store`` is loaded, never retrained; a partial one resumes from its last
    epoch checkpoint, with the thread count recorded there. ``threads``: torch threads while
    training (default 1 on CPU, where one thread per process is fastest for these small convs; the
    weights depend on it). ``callbacks``: :class:`Callback` objects, called after every step, after
    every epoch (after its checkpoint) and once after the run is stored. ``cudnn_benchmark``,
    ``compile``: the speed options of README.md, "GPU" (off: the bit-for-bit promise).
    Returns ``config``, ``path``, ``test_acc``, ``sparsity``, ``history`` and ``state`` (weights).
    """
    store = store or RunStore()
    if store.is_done(cfg):
        return load_run(cfg, store)
    device = resolve_device(device)
    parent_state = _parent_state(cfg, store)
    store.begin(cfg)
    ckpt = store.load_checkpoint(cfg)
    threads = ((ckpt or {}).get("threads")  # a resume computes with the count it started with
               or threads or (torch.get_num_threads() if device.type == "cuda" else 1))
    data = data or load_for_config(cfg, data_root)
    t_start = time.time()
    with _threads(threads), CudaDeterminism(device, cudnn_benchmark):
        summary = _train(cfg, store, data, device, parent_state, ckpt, progress, threads,
                         list(callbacks), compile_network=compile)
    env = run_env(cfg, device, threads, cudnn_benchmark, compile) | {
        "wall_seconds": time.time() - t_start}
    store.finish(cfg, summary.pop("state"), summary, summary.pop("logits"), summary.pop("features"),
                 env=env)
    for cb in callbacks:
        if getattr(cb, "after_run", None) is not None:
            cb.after_run(summary)
    return load_run(cfg, store)


def _parent_state(cfg: RunConfig, store: RunStore) -> dict | None:
    """The final weights of the run ``cfg`` starts from, when its schedule needs one."""
    if not get_schedule(cfg.pruning).needs_parent:
        return None
    parent = cfg.parent()
    if not store.is_done(parent):
        raise FileNotFoundError(
            f"{cfg.schedule} run {cfg.run_hash()} needs its parent run {parent.run_hash()} "
            f"({store.path(parent)}), which is not in the store; train the {parent.schedule} "
            "population first")
    return store.load_state(parent)


def _train(cfg: RunConfig, store: RunStore, data: Dataset, device: torch.device, parent_state,
           ckpt: dict | None, progress: bool, threads: int, callbacks: list,
           compile_network: bool = False) -> dict:
    """Restore, run every phase, evaluate: the summary with final state, logits and features."""
    # restore: the model from its seed, the parent's weights, then the checkpoint's
    train = data.train.to(device)
    torch.manual_seed(cfg.seed)
    method = get_method(cfg.method)
    model = method.build(cfg).to(device).to(memory_format=torch.channels_last)
    net = method.network(model)
    if parent_state is not None:
        net.load_state_dict(parent_state)
    specs = get_schedule(cfg.pruning).phases(method, cfg)
    history: list[dict] = ckpt["history"] if ckpt else []
    events: dict = ckpt.get("events", {}) if ckpt else {}
    resume_phase = [s.name for s in specs].index(ckpt["phase"]) if ckpt else 0
    if ckpt:
        model.load_state_dict(ckpt["model"])
    run_name = (f"run {cfg.run_hash()} ({cfg.method}/{cfg.schedule}"
                f"{'' if cfg.pruning == 'none' else f'@{cfg.sparsity}'} seed {cfg.seed})")
    check_config(cfg, run_name)
    from tqdm import tqdm

    bar = tqdm(total=sum(s.optim(cfg).epochs for s in specs), initial=len(history), desc=run_name[4:],
               file=sys.stdout, mininterval=10, leave=True, disable=not progress)
    # run the phases; ``compile_network``: every phase's loss runs the trunk (CE through forward,
    # the others through features), so compiling it speeds all up; the state-dict names stay eager
    if compile_network:
        net._trunk = torch.compile(net._trunk)
    try:
        for pid, spec in enumerate(specs[resume_phase:], resume_phase):
            phase = build_phase(cfg, spec, model, net, train, device)
            phase.callbacks += [_Checkpoint(cfg, store, model, net, phase, history, events, threads),
                                *callbacks, _Progress(bar)]
            start, opt_state = 0, None
            if ckpt and pid == resume_phase:
                start, opt_state = ckpt["epoch"], ckpt["opt"]
                states = ckpt.get("callbacks") or ([ckpt["pruner"]] if ckpt.get("pruner") else [])
                for cb, state in zip(_stateful(phase.callbacks), states, strict=False):  # old: pruner only
                    cb.load_state_dict(state)
            fit(phase, train, cfg.seed, pid, device, start_epoch=start, opt_state=opt_state,
                run_name=run_name)
            ckpt = None
    finally:
        net.__dict__.pop("_trunk", None)  # evaluation (and anything after training) runs eagerly
        bar.close()
    # evaluate (always fp32)
    logits, features = predict(net, data.test.images, device)
    acc = float((logits.argmax(1) == data.test.labels).float().mean())
    return {"epochs": history, "pruning_events": events, "test_acc": acc,
            "sparsity": sparsity(net), "train_images": len(train), "test_images": len(logits),
            "state": net.state_dict(), "logits": logits, "features": features}


def load_run(cfg: RunConfig, store: RunStore) -> dict:
    """A finished run's summary (files verified against their recorded hashes)."""
    hist = store.load_history(cfg)
    return {"config": cfg, "path": store.path(cfg), "test_acc": hist["test_acc"],
            "sparsity": hist["sparsity"], "history": hist, "state": store.load_state(cfg)}


def load_model(cfg: RunConfig, store: RunStore, device: torch.device | str = "cpu") -> WideResNet:
    """The evaluated network of a finished run (contrastive methods: encoder + linear classifier)."""
    net = get_method(cfg.method).eval_network(cfg)
    net.load_state_dict(store.load_state(cfg))
    return net.to(device).eval()
