"""Learning methods (a run config's ``method``), one registry entry each: the model, the phases
that train it and the evaluated WideResNet (its penultimate feature is what every metric reads,
its ``fc`` gives the predictions). Adding one: docs/ARCHITECTURE.md, "Where new things go".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import augment
from .config import ConfigError, RunConfig
from .losses import supcon_loss
from .models import SupConNet, WideResNet, autocast, channels_last, wide_resnet
from .pruning import encoder_only, head_only
from .registry import METHODS, Entry, RegistryError

#: ``loss_fn(x_uint8, labels, generator) -> scalar loss``: augments a batch and returns its loss.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


# --- losses: each closure augments a uint8 batch on its device and returns the training loss ---
def ce_loss_fn(model: nn.Module, device: torch.device, vflip: bool, precision: str = "fp32") -> LossFn:
    """Cross-entropy of ``model``'s logits on the CE augmentation."""
    def loss_fn(x, y, g):
        x = channels_last(augment.ce_augment(x, g, vflip))
        with autocast(device, precision):
            logits = model(x)
        return F.cross_entropy(logits.float(), y)
    return loss_fn


def supcon_loss_fn(model: SupConNet, device: torch.device, temperature: float,
                   base_temperature: float, precision: str = "fp32", labels: bool = True) -> LossFn:
    """SupCon on two views of every image; ``labels=False`` ignores the labels: SimCLR's NT-Xent."""
    def loss_fn(x, y, g):
        v = channels_last(augment.supcon_augment(x, g))
        with autocast(device, precision):
            z = model.project(v)
        return supcon_loss(torch.stack(z.chunk(2), 1), y if labels else None, temperature,
                           base_temperature)  # (B, 2 views, dim)
    return loss_fn


def linear_head_loss_fn(net: WideResNet, device: torch.device, vflip: bool,
                        precision: str = "fp32") -> LossFn:
    """CE on the frozen encoder's features (encoder in eval mode, no gradient through it)."""
    def loss_fn(x, y, g):
        x = channels_last(augment.ce_augment(x, g, vflip))
        with torch.no_grad(), autocast(device, precision):
            f = net.features(x)
        return F.cross_entropy(net.fc(f.float()), y)
    return loss_fn


# --- phase specs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Optim:
    """SGD settings and length of one phase."""

    epochs: int
    batch_size: int
    lr: float
    schedule: str
    weight_decay: float
    momentum: float = 0.9
    nesterov: bool = False
    milestones: tuple[float, ...] = ()


def main_optim(cfg: RunConfig) -> Optim:
    """The main phase (CE training, contrastive encoder training): the config's main fields."""
    return Optim(cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_schedule, cfg.weight_decay,
                 cfg.momentum, cfg.nesterov, cfg.lr_milestones)


def head_optim(cfg: RunConfig) -> Optim:
    """Linear evaluation on the frozen encoder: the ``head_*`` fields."""
    return Optim(cfg.head_epochs, cfg.head_batch_size, cfg.head_lr, cfg.head_lr_schedule,
                 cfg.head_weight_decay, cfg.momentum)


def finetune_optim(cfg: RunConfig) -> Optim:
    """One-shot fine-tuning: the ``finetune_*`` fields and the one-shot schedule's optimiser hparams."""
    return Optim(cfg.finetune_epochs, cfg.finetune_batch_size, cfg.finetune_lr,
                 cfg.hp("finetune_lr_schedule"), cfg.finetune_weight_decay,
                 cfg.hp("finetune_momentum"), cfg.hp("finetune_nesterov"))


def frozen_encoder(model: nn.Module, net: WideResNet) -> None:
    """Train mode of a linear head: everything in eval mode (BN statistics frozen) but ``fc``."""
    model.eval()
    net.fc.train()


@dataclass(frozen=True)
class PhaseSpec:
    """One optimisation phase as a method declares it. Every callable takes the run's ``model``
    (what :meth:`Method.build` returned) and ``net`` (its evaluated WideResNet). ``prune(model, net)``
    names the module and the parameter filter that gradual pruning acts on in this phase (None:
    nothing is pruned here); ``gmp_window``: the phase's own GMP window instead of the schedule's."""

    name: str
    optim: Callable[[RunConfig], Optim]
    params: Callable[[nn.Module, WideResNet], list]
    loss: Callable[[nn.Module, WideResNet, RunConfig, torch.device], LossFn]
    train_mode: Callable[[nn.Module, WideResNet], None] | None = None  # None: model.train()
    prune: Callable[[nn.Module, WideResNet], tuple[nn.Module, Callable[[str], bool] | None]] | None = None
    gmp_window: Callable[[RunConfig], tuple[float, float]] | None = None


# the callables look ce_loss_fn & co. up at call time, so a test can monkeypatch them here
CE_TRAIN = PhaseSpec(
    "train", main_optim, lambda model, net: list(model.parameters()),
    lambda model, net, cfg, dev: ce_loss_fn(model, dev, cfg.vflip, cfg.precision),
    prune=lambda model, net: (model, None))
LINEAR_HEAD = PhaseSpec(
    "head", head_optim, lambda model, net: list(net.fc.parameters()),
    lambda model, net, cfg, dev: linear_head_loss_fn(net, dev, cfg.vflip, cfg.precision),
    train_mode=frozen_encoder, prune=lambda model, net: (net, head_only),
    gmp_window=lambda cfg: cfg.hp("head_gmp"))
FINETUNE = PhaseSpec(
    "finetune", finetune_optim, lambda model, net: list(net.parameters()),
    lambda model, net, cfg, dev: ce_loss_fn(net, dev, cfg.vflip, cfg.precision))
FINETUNE_HEAD = dataclasses.replace(LINEAR_HEAD, name="finetune", optim=finetune_optim, prune=None,
                                    gmp_window=None)  # the linear head, fine-tuned, never pruned


def contrastive_train(labels: bool) -> PhaseSpec:
    """Encoder + projection head trained with SupCon (``labels``) or NT-Xent; GMP prunes the
    encoder only (never the projection head, which is dropped after training)."""
    return PhaseSpec(
        "train", main_optim, lambda model, net: list(model.parameters()),
        lambda model, net, cfg, dev: supcon_loss_fn(model, dev, cfg.temperature, cfg.base_temperature,
                                                    cfg.precision, labels=labels),
        prune=lambda model, net: (model, encoder_only))


# --- methods -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method(Entry):
    """Supervised cross-entropy on a WideResNet: the base of every method."""

    name: str = "ce"
    like: str = "ce"  # the preset base config it starts from (a Preset field: 'ce' or 'supcon')
    label: str = "CE"  # for figures and tables

    def build(self, cfg: RunConfig) -> nn.Module:
        """The model trained by the phases (initialised from the global torch RNG)."""
        return wide_resnet(cfg.depth, cfg.width, cfg.num_classes)

    def network(self, model: nn.Module) -> WideResNet:
        """The evaluated network inside ``model``: its weights are what a run stores."""
        return model

    def eval_network(self, cfg: RunConfig) -> WideResNet:
        """An empty evaluated network of ``cfg``'s shape, to load stored weights into."""
        return WideResNet(cfg.depth, cfg.width, cfg.num_classes)

    def phases(self, cfg: RunConfig) -> tuple[PhaseSpec, ...]:
        """The phases of a run that starts from its initialisation (dense or GMP)."""
        return (CE_TRAIN,)

    def finetune_phases(self, cfg: RunConfig) -> tuple[PhaseSpec, ...]:
        """The phases of a run fine-tuning a pruned parent (one-shot): CE end to end, or the head only."""
        return (FINETUNE_HEAD,) if cfg.finetune_head_only else (FINETUNE,)

    def validate(self, cfg: RunConfig) -> None:
        """Raise ``ConfigError`` for values this method cannot train with."""


@dataclass(frozen=True)
class Contrastive(Method):
    """Encoder + projection head trained contrastively (``labels``: SupCon; else SimCLR's NT-Xent),
    then a linear head on the frozen encoder; the projection head is dropped, the encoder evaluated."""

    name: str = "supcon"
    owns: tuple[str, ...] = ("temperature", "base_temperature", "proj_dim", "head_epochs",
                             "head_batch_size", "head_lr", "head_lr_schedule", "head_weight_decay")
    #: the linear head's own GMP window over the head-training steps (PROTOCOL.md, Pruning)
    hparams: dict[str, Any] = field(default_factory=lambda: {"head_gmp": (0.025, 0.5)}, hash=False,
                                    compare=False)
    like: str = "supcon"
    label: str = "SupCon"
    labels: bool = True

    def build(self, cfg: RunConfig) -> nn.Module:
        return SupConNet(cfg.depth, cfg.width, cfg.num_classes, cfg.proj_dim)

    def network(self, model: nn.Module) -> WideResNet:
        return model.net

    def phases(self, cfg: RunConfig) -> tuple[PhaseSpec, ...]:
        return (contrastive_train(self.labels), LINEAR_HEAD)

    def validate(self, cfg: RunConfig) -> None:
        if cfg.head_epochs < 1:
            raise ConfigError(f"head_epochs must be a positive integer for {self.name}; "
                              f"got {cfg.head_epochs}")


METHODS.base = Method
unregister, names, get = METHODS.unregister, METHODS.names, METHODS.get


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` under its name (``replace=True`` to redefine one, e.g. in a test)."""
    if isinstance(method, Method) and method.like not in ("ce", "supcon"):
        raise RegistryError(f"method {method.name!r}: like must be 'ce' or 'supcon' (the preset base "
                          f"config it starts from); got {method.like!r}")
    return METHODS.register(method, replace)


def labels() -> dict[str, str]:
    """Display label of every method (figures, tables)."""
    return {m.name: m.label for m in METHODS}


register(Method())
register(Contrastive())
register(Contrastive("simclr", label="SimCLR", labels=False))
