"""Pruning schedules, one registry entry each: where a schedule prunes, and what it needs.

A schedule is the ``pruning`` field of a run config. Its entry says which study stage plans it
and which configs it adds to a study (:func:`pcl.study.plan`); its GMP window, where it has a
fixed one; whether it starts from a finished parent run (``RunConfig.parent()``; the executors
train parents first); which phases it trains (a method's own, or a replacement such as
one-shot's fine-tuning); which training callbacks it adds to each phase (the pruning itself);
and which config fields it does not use (``config.canonical`` resets them).

Adding a schedule is one :func:`register` call, here or in user code::

    register(FixedGMP("gmp_mid", fixed=(0.3, 0.5), color="tab:olive"))

then list it in a preset's ``schedules``. Nothing else names schedules, except plots for colours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type hints only: config imports this module lazily, never the reverse
    import torch.nn as nn

    from .config import Preset, RunConfig
    from .methods import Method, PhaseSpec

#: Scopes of a magnitude prune: one threshold over all prunable weights, or per tensor.
SCOPES = ("global", "layerwise")
#: SupCon/SimCLR linear head: its own GMP over the head-training steps (PROTOCOL.md, Pruning).
HEAD_GMP = (0.025, 0.5)

_FINETUNE = ("finetune_epochs", "finetune_lr", "finetune_batch_size", "finetune_weight_decay",
             "finetune_head_only", "oneshot_scope")
_GMP_WINDOW = ("gmp_begin", "gmp_end")
_GMP = ("gmp_events", "gmp_scope")


class ScheduleError(ValueError):
    """An unknown schedule name, or a registration that would clash."""


@dataclass(frozen=True)
class Schedule:
    """No pruning ('none', population label 'dense'); the base of every other schedule."""

    name: str = "none"
    stage: str = "dense"  # the study.plan stage that trains it
    always: bool = True  # planned in every study; False: only when a preset lists it in schedules
    needs_parent: bool = False
    unused: tuple[str, ...] = _FINETUNE + _GMP_WINDOW + _GMP
    color: str | None = "0.3"  # plots: line and bar colour; None = the plot's default cycle
    main: bool = False  # plots: one of the schedules every main figure compares

    def label(self, cfg: RunConfig) -> str:
        """The population label: a config's ``schedule``."""
        return "dense" if self.name == "none" else self.name

    def window(self, cfg: RunConfig) -> tuple[float, float] | None:
        """(begin, end) of GMP as fractions of the run's optimiser steps; None when it has none."""
        return None

    def configs(self, preset: Preset, method: str, seed: int) -> list[RunConfig]:
        """The runs of this schedule in ``preset`` for one method and seed: the dense run, or one
        run per sparsity of the preset."""
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
        """Training callbacks (``after_step``/``after_epoch``) this schedule adds to one phase.

        Called once per phase when it is built, after any resumed weights are loaded."""
        return []


@dataclass(frozen=True)
class FixedGMP(Schedule):
    """Gradual magnitude pruning over a fixed window of every phase a method lets it prune."""

    name: str = "gmp_early"
    stage: str = "gmp"
    always: bool = False
    fixed: tuple[float, float] = (0.0125, 0.25)
    unused: tuple[str, ...] = _FINETUNE + _GMP_WINDOW
    color: str | None = None
    main: bool = True

    def window(self, cfg: RunConfig) -> tuple[float, float] | None:
        return self.fixed

    def callbacks(self, cfg, spec, model, net, total_steps):
        from .pruning import Pruner

        if spec.prune is None:  # e.g. a phase that trains nothing prunable
            return []
        module, include = spec.prune(model, net)
        begin, end = spec.gmp_window or self.window(cfg)
        return [Pruner.gmp(module, cfg.sparsity, begin, end, total_steps, cfg.gmp_events,
                           scope=cfg.gmp_scope, include=include)]


@dataclass(frozen=True)
class OnsetGMP(FixedGMP):
    """GMP with the window in the config (``gmp_begin``, ``gmp_end``): the pruning-onset sweep."""

    name: str = "gmp"
    stage: str = "onset"
    always: bool = True  # the preset's onset_begins say which runs (none when empty)
    unused: tuple[str, ...] = _FINETUNE
    main: bool = False

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
        from .config import ConfigError

        if cfg.gmp_begin >= cfg.gmp_end:
            raise ConfigError(f"GMP begin must be before end; got begin={cfg.gmp_begin}, "
                              f"end={cfg.gmp_end}")


@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune the finished dense parent once (global magnitude), then fine-tune with masks held."""

    name: str = "oneshot"
    stage: str = "oneshot"
    always: bool = False
    needs_parent: bool = True
    unused: tuple[str, ...] = _GMP_WINDOW + _GMP
    color: str | None = "tab:green"
    main: bool = True

    def validate(self, cfg: RunConfig) -> None:
        from .config import ConfigError

        if cfg.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be >= 0; got {cfg.finetune_epochs}")

    def parent(self, cfg: RunConfig) -> RunConfig | None:
        from .config import dense_parent

        return dense_parent(cfg)

    def phases(self, method, cfg):
        return method.finetune_phases(cfg)

    def callbacks(self, cfg, spec, model, net, total_steps):
        from .pruning import Pruner, apply_masks, magnitude_masks

        # zeros already present (a resumed run) rank first, so a resume recovers the same masks
        masks = magnitude_masks(net, cfg.sparsity, cfg.oneshot_scope)
        apply_masks(net, masks)
        return [Pruner(net, masks=masks)]


_REGISTRY: dict[str, Schedule] = {}


def register(schedule: Schedule, replace: bool = False) -> Schedule:
    """Add ``schedule`` under its name (``replace=True`` to redefine one, e.g. in a test)."""
    if not isinstance(schedule, Schedule):
        raise ScheduleError(f"register a Schedule instance; got {type(schedule).__name__}")
    if schedule.name in _REGISTRY and not replace:
        raise ScheduleError(f"schedule {schedule.name!r} is already registered")
    _REGISTRY[schedule.name] = schedule
    return schedule


def unregister(name: str) -> None:
    """Remove a schedule (tests that register a temporary one)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered schedule name (the allowed values of ``RunConfig.pruning``), in order."""
    return tuple(_REGISTRY)


def get(name: str) -> Schedule:
    """The schedule registered as ``name``; an unknown name raises naming the allowed ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ScheduleError(f"unknown pruning schedule {name!r}; allowed: "
                            f"{', '.join(map(repr, _REGISTRY))}") from None


def stages() -> tuple[str, ...]:
    """The study stages in plan order: 'dense', 'floor' (the noise floor's dense runs), then the
    stage of every registered schedule (gmp, oneshot, onset), each once."""
    out = ["dense", "floor"]
    for s in _REGISTRY.values():
        if s.stage not in out:
            out.append(s.stage)
    return tuple(out)


def main_schedules() -> tuple[str, ...]:
    """The schedules every main figure compares, in registration order."""
    return tuple(n for n, s in _REGISTRY.items() if s.main)


def palette() -> dict[str, str]:
    """Schedule colours for the plots: 'dense' and every schedule that names one."""
    out = {"dense": _REGISTRY["none"].color} if "none" in _REGISTRY else {}
    return out | {n: s.color for n, s in _REGISTRY.items() if n != "none" and s.color}


register(Schedule())
register(FixedGMP("gmp_early", fixed=(0.0125, 0.25), color="tab:red"))
register(FixedGMP("gmp_late", fixed=(0.10, 0.194), color="tab:blue"))
register(OneShot())
register(OnsetGMP())
