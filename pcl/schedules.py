"""Pruning schedules (a run config's ``pruning``), one registry entry each: where a schedule
prunes, its role in the study and what it needs (docs/ARCHITECTURE.md, "The study's vocabulary").

Adding one is a :func:`register` call, here or in user code, then a preset listing it::

    register(FixedGMP("gmp_mid", fixed=(0.3, 0.5), ramp=pruning.linear))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch.nn as nn

from .config import ConfigError, Preset, RunConfig, dense_parent
from .pruning import Pruner, apply_masks, cubic, gmp_sparsity, magnitude_masks
from .registry import SCHEDULES, Entry

if TYPE_CHECKING:  # type hints only
    from .methods import Method, PhaseSpec

_FINETUNE = ("finetune_epochs", "finetune_lr", "finetune_batch_size", "finetune_weight_decay",
             "finetune_head_only", "oneshot_scope")
_GMP = ("gmp_events", "gmp_scope")


@dataclass(frozen=True)
class Schedule(Entry):
    """No pruning ('none', population label 'dense'); the base of every other schedule."""

    name: str = "none"
    stage: str = "dense"  # the study.plan stage that trains it
    always: bool = True  # planned in every study; False: only when a preset lists it in schedules
    needs_parent: bool = False
    main: bool = False  # one of the schedules every main figure compares
    sweep: bool = False  # its runs are the onset sweep (the onset curve's points)
    ramp: Callable[[float, float], float] = cubic  # (final, fraction of the window) -> sparsity

    def label(self, cfg: RunConfig) -> str:
        """The population label: a config's ``schedule``."""
        return "dense" if self.name == "none" else self.name

    def window(self, cfg: RunConfig) -> tuple[float, float] | None:
        """(begin, end) of GMP as fractions of the run's optimiser steps; None when it has none."""
        return None

    def target(self, cfg: RunConfig, t: float) -> float:
        """Target sparsity at fraction ``t`` of the pruned phase's steps (what F0 draws)."""
        w = self.window(cfg)
        return 0.0 if w is None else gmp_sparsity(t, w[0], w[1], cfg.sparsity, self.ramp)

    def configs(self, preset: Preset, method: str, seed: int) -> list[RunConfig]:
        """This schedule's runs in ``preset`` for one method and seed: dense, or one per sparsity."""
        if self.name == "none":
            return [preset.run(method, seed)]
        return [preset.run(method, seed, self.name, s) for s in preset.sparsities]

    def validate(self, cfg: RunConfig) -> None:
        """Raise ``ConfigError`` for values this schedule cannot run with."""

    def parent(self, cfg: RunConfig) -> RunConfig | None:
        """The finished run this one starts from (None: it starts from its seed's initialisation)."""
        return None

    def phases(self, method: Method, cfg: RunConfig) -> tuple[PhaseSpec, ...]:
        """The phases a run trains: the method's own, unless the schedule replaces them."""
        return method.phases(cfg)

    def callbacks(self, cfg: RunConfig, spec: PhaseSpec, model: nn.Module, net: nn.Module,
                  total_steps: int) -> list[Any]:
        """Training callbacks (``after_step``/``after_epoch``) this schedule adds to one phase; called
        once per phase when it is built, after any resumed weights are loaded."""
        return []


@dataclass(frozen=True)
class FixedGMP(Schedule):
    """Gradual magnitude pruning over a fixed window of every phase a method lets it prune."""

    name: str = "gmp_early"
    owns: tuple[str, ...] = _GMP
    stage: str = "gmp"
    always: bool = False
    main: bool = True
    fixed: tuple[float, float] = (0.0125, 0.25)

    def window(self, cfg: RunConfig) -> tuple[float, float] | None:
        return self.fixed

    def callbacks(self, cfg, spec, model, net, total_steps):
        if spec.prune is None:  # e.g. a phase that trains nothing prunable
            return []
        module, include = spec.prune(model, net)
        begin, end = spec.gmp_window(cfg) if spec.gmp_window else self.window(cfg)
        return [Pruner.gmp(module, cfg.sparsity, begin, end, total_steps, cfg.gmp_events,
                           scope=cfg.gmp_scope, include=include, ramp=self.ramp)]


@dataclass(frozen=True)
class OnsetGMP(FixedGMP):
    """GMP with the window in the config (``gmp_begin``, ``gmp_end``): the pruning-onset sweep."""

    name: str = "gmp"
    owns: tuple[str, ...] = _GMP + ("gmp_begin", "gmp_end")
    stage: str = "onset"
    always: bool = True  # the preset's onset_begins say which runs (none when empty)
    main: bool = False
    sweep: bool = True

    def configs(self, preset, method, seed):
        """GMP starting at each of ``preset.onset_begins``, ``onset_duration`` long (clipped at the
        end of training), at ``onset_sparsity``."""
        return [preset.run(method, seed, self.name, preset.onset_sparsity, gmp_begin=b,
                           gmp_end=min(1.0, b + preset.onset_duration))
                for b in preset.onset_begins]

    def label(self, cfg: RunConfig) -> str:
        return f"gmp@{cfg.gmp_begin:.2f}-{cfg.gmp_end:.2f}"

    def window(self, cfg: RunConfig) -> tuple[float, float] | None:
        return (cfg.gmp_begin, cfg.gmp_end)

    def validate(self, cfg: RunConfig) -> None:
        if cfg.gmp_begin >= cfg.gmp_end:
            raise ConfigError(f"GMP begin must be before end; got begin={cfg.gmp_begin}, "
                              f"end={cfg.gmp_end}")


@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune the finished dense parent once (global magnitude), then fine-tune with masks held
    (its fine-tuning optimiser is its hparams: constant lr, Nesterov momentum 0.9)."""

    name: str = "oneshot"
    owns: tuple[str, ...] = _FINETUNE
    hparams: dict[str, Any] = field(default_factory=lambda: {
        "finetune_momentum": 0.9, "finetune_nesterov": True, "finetune_lr_schedule": "constant"},
        hash=False, compare=False)
    stage: str = "oneshot"
    always: bool = False
    needs_parent: bool = True
    main: bool = True

    def target(self, cfg: RunConfig, t: float) -> float:
        return cfg.sparsity

    def validate(self, cfg: RunConfig) -> None:
        if cfg.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be >= 0; got {cfg.finetune_epochs}")

    def parent(self, cfg: RunConfig) -> RunConfig | None:
        return dense_parent(cfg)

    def phases(self, method, cfg):
        return method.finetune_phases(cfg)

    def callbacks(self, cfg, spec, model, net, total_steps):
        # zeros already present (a resumed run) rank first, so a resume recovers the same masks
        masks = magnitude_masks(net, cfg.sparsity, cfg.oneshot_scope)
        apply_masks(net, masks)
        return [Pruner(net, masks=masks)]


SCHEDULES.base = Schedule
register, unregister, names, get = SCHEDULES.register, SCHEDULES.unregister, SCHEDULES.names, SCHEDULES.get


def stages() -> tuple[str, ...]:
    """The study stages in plan order: 'dense', 'floor' (the noise floor's dense runs), then the
    stage of every registered schedule (gmp, oneshot, onset), each once."""
    return tuple(dict.fromkeys(["dense", "floor", *(s.stage for s in SCHEDULES)]))


def main_schedules() -> tuple[str, ...]:
    """The schedules every main figure compares, in registration order."""
    return tuple(s.name for s in SCHEDULES if s.main)


register(Schedule())
register(FixedGMP("gmp_early", fixed=(0.0125, 0.25)))
register(FixedGMP("gmp_late", fixed=(0.10, 0.194)))
register(OneShot())
register(OnsetGMP())
