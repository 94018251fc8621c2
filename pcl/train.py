"""The training loop (CE, SupCon encoder, linear head, one-shot fine-tuning) and ``train_run``.

GPU-first in the style of airbench: the training split lives on the device as uint8, every batch
is augmented there with per-image random parameters, channels_last and bf16 autocast on CUDA
(fp32 on CPU), no DataLoader and no per-image Python. Each epoch's data order and augmentation
are seeded from (seed, phase, epoch), so an interrupted run resumes from its last epoch checkpoint
and gives the same result as an uninterrupted one.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import augment
from .config import HEAD_GMP, RunConfig
from .data import Dataset, Split, load_for_config
from .losses import supcon_loss
from .models import SupConNet, WideResNet, build_model
from .pruning import Pruner, apply_masks, encoder_only, head_only, magnitude_masks, sparsity
from .store import RunStore


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lr_at(step: int, total: int, base: float, schedule: str, milestones=()) -> float:
    """Learning rate before optimiser step ``step`` (0-based) of ``total``."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if schedule == "step":
        return base * 0.1 ** sum(step >= m * total for m in milestones)
    raise ValueError(f"unknown lr schedule {schedule!r}; allowed: constant, cosine, step")


class StepHook(Protocol):
    """Anything called after every optimiser step (``step`` counts from 1), e.g. a Pruner."""

    def after_step(self, step: int) -> None: ...


@dataclass
class Phase:
    """One optimisation phase of a run."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    schedule: str
    weight_decay: float
    momentum: float = 0.9
    nesterov: bool = False
    milestones: tuple = ()
    hooks: list[StepHook] = field(default_factory=list)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only (a last partial batch is dropped); one batch if n < batch_size."""
    return max(1, n // batch_size)


def _seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p)) % (2 ** 62)
    return h


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def fit(model: nn.Module, params: list, split: Split, loss_fn: LossFn,
        phase: Phase, seed: int, phase_id: int, device: torch.device,
        start_epoch: int = 0, opt_state: dict | None = None,
        on_epoch: Callable[[int, dict, torch.optim.Optimizer], None] | None = None,
        progress: Any = None, train_mode: Callable[[], None] | None = None) -> list[dict]:
    """Run ``phase.epochs`` epochs of SGD on ``split`` (already on ``device``).

    ``loss_fn(x_uint8, y, generator)`` augments and returns the loss. After every optimiser step
    each hook's ``after_step(global_step)`` runs (pruning lives there). ``on_epoch(epoch, row,
    optimizer)`` runs after every epoch (checkpointing lives there).
    """
    opt = torch.optim.SGD(params, lr=phase.lr, momentum=phase.momentum,
                          weight_decay=phase.weight_decay, nesterov=phase.nesterov)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    n = len(split)
    spe = steps_per_epoch(n, phase.batch_size)
    bs = min(phase.batch_size, n)
    total = spe * phase.epochs
    rows = []
    for epoch in range(start_epoch, phase.epochs):
        (train_mode or model.train)()
        t0 = time.perf_counter()
        gen_cpu = torch.Generator().manual_seed(_seed(seed, phase_id, epoch, 1))
        gen_dev = torch.Generator(device=device).manual_seed(_seed(seed, phase_id, epoch, 2))
        perm = torch.randperm(n, generator=gen_cpu).to(device)
        loss_sum = torch.zeros((), device=device)
        for i in range(spe):
            step = epoch * spe + i
            for gparam in opt.param_groups:
                gparam["lr"] = lr_at(step, total, phase.lr, phase.schedule, phase.milestones)
            idx = perm[i * bs:(i + 1) * bs]
            loss = loss_fn(split.images[idx], split.labels[idx], gen_dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for h in phase.hooks:
                h.after_step(step + 1)
            loss_sum += loss.detach()
        if device.type == "cuda":
            torch.cuda.synchronize()
        row = {"phase": phase.name, "epoch": epoch + 1, "loss": float(loss_sum) / spe,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
               "images": spe * bs}
        rows.append(row)
        if on_epoch is not None:
            on_epoch(epoch + 1, row, opt)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(phase=phase.name, loss=f"{row['loss']:.3f}", refresh=False)
    return rows


# ------------------------------------------------------------------------------------------------
def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """channels_last everywhere: faster on CUDA and, measured, on this project's CPUs too."""
    return x.contiguous(memory_format=torch.channels_last)


def ce_loss_fn(model: nn.Module, device: torch.device, vflip: bool) -> Callable:
    def loss_fn(x, y, g):
        x = channels_last(augment.ce_augment(x, g, vflip))
        with _autocast(device):
            logits = model(x)
        return F.cross_entropy(logits.float(), y)
    return loss_fn


def supcon_loss_fn(model: SupConNet, device: torch.device, temperature: float,
                   base_temperature: float) -> Callable:
    def loss_fn(x, y, g):
        v = channels_last(augment.supcon_augment(x, g))
        with _autocast(device):
            z = model.project(v)
        b = x.shape[0]
        return supcon_loss(torch.stack([z[:b], z[b:]], 1), y, temperature, base_temperature)
    return loss_fn


def linear_head_loss_fn(net: WideResNet, device: torch.device, vflip: bool) -> Callable:
    """CE on the frozen encoder's features (encoder in eval mode, no gradient through it)."""
    def loss_fn(x, y, g):
        x = channels_last(augment.ce_augment(x, g, vflip))
        with torch.no_grad(), _autocast(device):
            f = net.features(x)
        return F.cross_entropy(net.fc(f.float()), y)
    return loss_fn


@torch.no_grad()
def predict(net: WideResNet, images: torch.Tensor, device: torch.device | str,
            batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time (logits, penultimate features): eval mode, no augmentation, float32 on CPU."""
    device = torch.device(device)
    net.eval()
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        x = channels_last(augment.eval_transform(images[i:i + batch_size].to(device)))
        with _autocast(device):
            f = net.features(x)
            logits.append(net.fc(f).float().cpu())
        feats.append(f.float().cpu())
    return torch.cat(logits), torch.cat(feats)


# ------------------------------------------------------------------------------------------------
def _phases(cfg: RunConfig) -> list[str]:
    if cfg.pruning == "oneshot":
        return ["finetune"]
    return ["train", "head"] if cfg.method == "supcon" else ["train"]


def _epochs(cfg: RunConfig, name: str) -> int:
    return {"train": cfg.epochs, "head": cfg.head_epochs, "finetune": cfg.finetune_epochs}[name]


def train_run(cfg: RunConfig, store: RunStore | None = None, data: Dataset | None = None,
              data_root: str | None = None, device: torch.device | str | None = None,
              progress: bool = True) -> dict:
    """Train (or load) the run ``cfg`` describes and return its summary.

    A finished run in ``store`` is loaded, never retrained. A partial one resumes from its last
    epoch checkpoint. The returned dict has ``config``, ``path``, ``test_acc``, ``sparsity``,
    ``history`` and ``state`` (the final WideResNet state dict).
    """
    store = store or RunStore()
    if store.is_done(cfg):
        return load_run(cfg, store)
    device = torch.device(device) if device is not None else default_device()
    parent_state = None
    if cfg.pruning == "oneshot":
        parent = cfg.parent()
        if not store.is_done(parent):
            raise FileNotFoundError(
                f"one-shot run {cfg.run_hash()} needs its dense parent {parent.run_hash()} "
                f"({store.path(parent)}), which is not in the store; train the dense population first")
        parent_state = store.load_state(parent)
    data = data or load_for_config(cfg, data_root)
    train = data.train.to(device)
    store.begin(cfg)
    ckpt = store.load_checkpoint(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
    net = model.net if isinstance(model, SupConNet) else model
    if parent_state is not None:
        net.load_state_dict(parent_state)

    names = _phases(cfg)
    history: list[dict] = ckpt["history"] if ckpt else []
    events: dict = ckpt.get("events", {}) if ckpt else {}
    resume_phase = names.index(ckpt["phase"]) if ckpt else 0
    if ckpt:
        model.load_state_dict(ckpt["model"])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(_epochs(cfg, n) for n in names), desc=f"{cfg.method}/{cfg.schedule}"
                   f"{'' if cfg.pruning == 'none' else f'@{cfg.sparsity}'} seed {cfg.seed}",
                   file=sys.stdout, mininterval=10, leave=True)
        bar.update(len(history))
    try:
        for pid, name in enumerate(names):
            if pid < resume_phase:
                continue
            phase, params, loss_fn, train_mode = _build_phase(cfg, name, model, net, train, device)
            pruner = next((h for h in phase.hooks if isinstance(h, Pruner)), None)
            start, opt_state = 0, None
            if ckpt and pid == resume_phase:
                start, opt_state = ckpt["epoch"], ckpt["opt"]
                if pruner is not None and ckpt.get("pruner"):
                    pruner.load_state_dict(ckpt["pruner"])

            def on_epoch(epoch, row, opt, name=name, pruner=pruner):
                row["sparsity"] = sparsity(net)
                history.append(row)
                if pruner is not None:
                    events[name] = pruner.events
                store.save_checkpoint(cfg, {"phase": name, "epoch": epoch, "model": model.state_dict(),
                                            "opt": opt.state_dict(), "history": history,
                                            "pruner": pruner.state_dict() if pruner else None,
                                            "events": events})

            fit(model, params, train, loss_fn, phase, cfg.seed, pid, device, start, opt_state,
                on_epoch, bar, train_mode)
            ckpt = None
    finally:
        if bar is not None:
            bar.close()
    logits, features = predict(net, data.test.images, device)
    acc = float((logits.argmax(1) == data.test.labels).float().mean())
    summary = {"epochs": history, "pruning_events": events, "test_acc": acc,
               "sparsity": sparsity(net), "train_images": len(train), "test_images": len(logits)}
    store.finish(cfg, net.state_dict(), summary, logits, features)
    return load_run(cfg, store)


def _build_phase(cfg: RunConfig, name: str, model: nn.Module, net: WideResNet, train: Split,
                 device: torch.device):
    """(Phase, parameters, loss function, train-mode setter) for one phase of ``cfg``."""
    n = len(train)
    if name == "train":
        phase = Phase("train", cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_schedule,
                      cfg.weight_decay, cfg.momentum, cfg.nesterov, cfg.lr_milestones)
        total = steps_per_epoch(n, cfg.batch_size) * cfg.epochs
        if cfg.pruning not in ("none", "oneshot"):
            begin, end = cfg.gmp_window
            include = encoder_only if cfg.method == "supcon" else None
            phase.hooks.append(Pruner.gmp(model, cfg.sparsity, begin, end, total, cfg.gmp_events,
                                          scope=cfg.gmp_scope, include=include))
        if cfg.method == "ce":
            return phase, list(model.parameters()), ce_loss_fn(model, device, cfg.vflip), None
        return (phase, list(model.parameters()),
                supcon_loss_fn(model, device, cfg.temperature, cfg.base_temperature), None)
    if name == "head":
        phase = Phase("head", cfg.head_epochs, cfg.head_batch_size, cfg.head_lr,
                      cfg.head_lr_schedule, cfg.head_weight_decay, cfg.momentum)
        total = steps_per_epoch(n, cfg.head_batch_size) * cfg.head_epochs
        # the encoder keeps its zeros (masks re-applied is unnecessary: it receives no updates)
        if cfg.pruning not in ("none", "oneshot"):
            phase.hooks.append(Pruner.gmp(net, cfg.sparsity, *HEAD_GMP, total, cfg.gmp_events,
                                          scope=cfg.gmp_scope, include=head_only))

        def head_mode():
            model.eval()
            net.fc.train()
        return phase, list(net.fc.parameters()), linear_head_loss_fn(net, device, cfg.vflip), head_mode
    # one-shot: global magnitude prune of the dense parent, then CE fine-tuning with masks held
    phase = Phase("finetune", cfg.finetune_epochs, cfg.finetune_batch_size, cfg.finetune_lr,
                  "constant", cfg.finetune_weight_decay, 0.9, True)
    # zeros already present (a resumed run) rank first, so a resume recovers the same masks
    masks = magnitude_masks(net, cfg.sparsity, cfg.oneshot_scope)
    apply_masks(net, masks)
    phase.hooks.append(Pruner(net, masks=masks))
    if cfg.finetune_head_only:
        def ft_mode():
            model.eval()
            net.fc.train()
        return phase, list(net.fc.parameters()), linear_head_loss_fn(net, device, cfg.vflip), ft_mode
    return phase, list(net.parameters()), ce_loss_fn(net, device, cfg.vflip), None


def load_run(cfg: RunConfig, store: RunStore) -> dict:
    """A finished run's summary (files verified against their recorded hashes)."""
    hist = store.load_history(cfg)
    return {"config": cfg, "path": store.path(cfg), "test_acc": hist["test_acc"],
            "sparsity": hist["sparsity"], "history": hist, "state": store.load_state(cfg)}


def load_model(cfg: RunConfig, store: RunStore, device: torch.device | str = "cpu") -> WideResNet:
    """The final network of a finished run (for SupCon: encoder + linear classifier)."""
    net = WideResNet(cfg.depth, cfg.width, cfg.num_classes)
    net.load_state_dict(store.load_state(cfg))
    return net.to(device).eval()
