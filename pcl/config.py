"""Run configuration, validation, hashing and the named presets.

One frozen :class:`RunConfig` describes one training run completely; its hash names the run's
folder in the run store (as open_lth does). A :class:`Preset` describes a whole study: the two
per-method base configs, the seeds, sparsities, schedules and evaluation settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

METHODS = ("ce", "supcon")
PRUNINGS = ("none", "gmp_early", "gmp_late", "gmp", "oneshot")
LR_SCHEDULES = ("constant", "cosine", "step")
DATASETS = ("cifar10", "synthetic")
SCOPES = ("global", "layerwise")

#: GMP schedules as (begin, end) fractions of a run's optimiser steps (PROTOCOL.md, Pruning).
GMP_SCHEDULES = {"gmp_early": (0.0125, 0.25), "gmp_late": (0.10, 0.194)}
#: SupCon linear head: its own GMP over the head-training steps.
HEAD_GMP = (0.025, 0.5)


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the value and what is."""


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class RunConfig:
    """Every hyperparameter of one run. Fields not used by a method are still hashed."""

    method: str = "ce"
    seed: int = 0
    # data
    dataset: str = "cifar10"
    train_per_class: int | None = None  # class-balanced subset of the training split; None = all
    test_per_class: int | None = None  # class-balanced subset of the test split; None = all
    synthetic_size: int = 0  # images per split for dataset="synthetic"
    # model
    depth: int = 16
    width: int = 2
    num_classes: int = 10
    # main phase (CE training or SupCon encoder training)
    epochs: int = 205
    batch_size: int = 128
    lr: float = 0.1
    lr_schedule: str = "cosine"
    lr_milestones: tuple[float, ...] = ()  # fractions of the run for "step"; lr x0.1 at each
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    vflip: bool = False  # the original's CE pipeline also flips vertically
    # SupCon
    temperature: float = 0.5
    base_temperature: float = 0.07
    proj_dim: int = 128
    head_epochs: int = 100
    head_batch_size: int = 256
    head_lr: float = 0.1
    head_lr_schedule: str = "cosine"
    head_weight_decay: float = 0.0
    # pruning
    pruning: str = "none"
    sparsity: float = 0.0
    gmp_begin: float = 0.0  # only for pruning="gmp"; named schedules set their own
    gmp_end: float = 0.0
    gmp_events: int = 40
    gmp_scope: str = "layerwise"  # as the original; "global" is the other reading
    # one-shot fine-tuning
    finetune_epochs: int = 30
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 128
    finetune_weight_decay: float = 5e-4
    finetune_head_only: bool = False
    oneshot_scope: str = "global"

    def __post_init__(self) -> None:
        validate(self)

    # --- derived -----------------------------------------------------------------------------
    @property
    def gmp_window(self) -> tuple[float, float]:
        """(begin, end) of the GMP schedule as fractions of the run's optimiser steps."""
        if self.pruning in GMP_SCHEDULES:
            return GMP_SCHEDULES[self.pruning]
        return (self.gmp_begin, self.gmp_end)

    @property
    def schedule(self) -> str:
        """A short human label: dense, gmp_early, gmp_late, gmp@0.40-0.59, oneshot."""
        if self.pruning == "gmp":
            return f"gmp@{self.gmp_begin:.2f}-{self.gmp_end:.2f}"
        return "dense" if self.pruning == "none" else self.pruning

    def parent(self) -> "RunConfig | None":
        """The dense run a one-shot run starts from (None for every other run)."""
        if self.pruning != "oneshot":
            return None
        return dense_parent(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config fields {sorted(unknown)}")
        d = dict(d)
        if "lr_milestones" in d:
            d["lr_milestones"] = tuple(d["lr_milestones"])
        return cls(**d)

    def run_hash(self) -> str:
        """A 12-hex-digit hash of every field: the run's folder name."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_FINETUNE = ("finetune_epochs", "finetune_lr", "finetune_batch_size", "finetune_weight_decay",
             "finetune_head_only", "oneshot_scope")
_SUPCON_ONLY = ("temperature", "base_temperature", "proj_dim", "head_epochs", "head_batch_size",
                "head_lr", "head_lr_schedule", "head_weight_decay")


def canonical(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every field the run does not use reset to its default (so hashes match)."""
    d = RunConfig()
    unused = []
    if cfg.pruning != "oneshot":
        unused += _FINETUNE
    if cfg.pruning != "gmp":
        unused += ["gmp_begin", "gmp_end"]
    if cfg.pruning in ("none", "oneshot"):
        unused += ["gmp_events", "gmp_scope"]
    if cfg.method == "ce":
        unused += _SUPCON_ONLY
    if cfg.dataset != "synthetic":
        unused += ["synthetic_size"]
    return replace(cfg, **{f: getattr(d, f) for f in unused})


def dense_parent(cfg: RunConfig) -> RunConfig:
    """The same run without pruning: the dense run a one-shot run starts from."""
    return canonical(replace(cfg, pruning="none", sparsity=0.0))


def validate(c: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value and what is allowed."""
    _choice("method", c.method, METHODS)
    _choice("pruning schedule", c.pruning, PRUNINGS)
    _choice("dataset", c.dataset, DATASETS)
    _choice("lr_schedule", c.lr_schedule, LR_SCHEDULES)
    _choice("gmp_scope", c.gmp_scope, SCOPES)
    _choice("oneshot_scope", c.oneshot_scope, SCOPES)
    _choice("head_lr_schedule", c.head_lr_schedule, LR_SCHEDULES)
    if c.depth < 10 or (c.depth - 4) % 6:
        raise ConfigError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...); got {c.depth}")
    if c.width < 1:
        raise ConfigError(f"width must be a positive integer; got {c.width}")
    for name in ("epochs", "batch_size", "head_batch_size", "finetune_batch_size", "gmp_events"):
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be a positive integer; got {getattr(c, name)}")
    if c.method == "supcon" and c.head_epochs < 1:
        raise ConfigError(f"head_epochs must be a positive integer for supcon; got {c.head_epochs}")
    if c.pruning == "oneshot" and c.finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs must be >= 0; got {c.finetune_epochs}")
    if not (0.0 <= c.sparsity < 1.0):
        raise ConfigError(f"sparsity must be in [0, 1); got {c.sparsity}")
    if c.pruning == "none" and c.sparsity != 0.0:
        raise ConfigError(f"sparsity {c.sparsity} given with pruning='none'; choose a pruning schedule "
                          f"from {PRUNINGS[1:]}")
    if c.pruning != "none" and c.sparsity == 0.0:
        raise ConfigError(f"pruning={c.pruning!r} needs a sparsity in (0, 1); got 0.0")
    for name in ("gmp_begin", "gmp_end"):
        v = getattr(c, name)
        if not (0.0 <= v <= 1.0):
            raise ConfigError(f"{name} is a fraction of the run's steps and must be in [0, 1]; got {v}")
    if c.pruning == "gmp" and c.gmp_begin >= c.gmp_end:
        raise ConfigError(f"GMP begin must be before end; got begin={c.gmp_begin}, end={c.gmp_end}")
    for name in ("train_per_class", "test_per_class"):
        v = getattr(c, name)
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be a positive integer or None; got {v}")
    if c.dataset == "synthetic" and c.synthetic_size < c.num_classes:
        raise ConfigError(f"synthetic_size must be at least num_classes; got {c.synthetic_size}")
    if any(not (0 < m < 1) for m in c.lr_milestones):
        raise ConfigError(f"lr_milestones are fractions in (0, 1); got {c.lr_milestones}")


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A whole study: base configs per method, populations, pruning grid and evaluation."""

    name: str
    description: str
    ce: RunConfig
    supcon: RunConfig
    seeds: int
    sparsities: tuple[float, ...]
    schedules: tuple[str, ...] = ("gmp_early", "gmp_late", "oneshot")
    onset_begins: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4, 0.6)
    onset_duration: float = 0.2375  # same length as gmp_early
    onset_sparsity: float = 0.9
    pd_models: int = 5  # models per population for prediction depth
    pd_train_images: int | None = None  # training images used to fit the probes; None = all
    knn_k: int = 30
    umap_sparsity: float = 0.95
    headline_sparsity: float = 0.9  # "high sparsity" for F3, F4, F8 and the claims

    def base(self, method: str) -> RunConfig:
        _choice("method", method, METHODS)
        return self.ce if method == "ce" else self.supcon

    def run(self, method: str, seed: int, pruning: str = "none", sparsity: float = 0.0,
            **overrides: Any) -> RunConfig:
        """The config of one run of this study."""
        return canonical(replace(self.base(method), seed=seed, pruning=pruning, sparsity=sparsity,
                                 **overrides))

    def label(self) -> str:
        """What every figure says about its scale."""
        c = self.ce
        data = (f"synthetic ({c.synthetic_size} img)" if c.dataset == "synthetic" else
                f"CIFAR-10 train {'full' if c.train_per_class is None else f'{c.train_per_class}/class'}"
                f", test {'full' if c.test_per_class is None else f'{c.test_per_class}/class'}")
        return (f"preset '{self.name}': WRN-{c.depth}-{c.width}, {data}, {self.seeds} seeds, "
                f"CE {c.epochs} ep, SupCon {self.supcon.epochs}+{self.supcon.head_epochs} ep")


_PAPER_CE = RunConfig(method="ce", epochs=205, batch_size=128, lr=0.1, lr_schedule="cosine",
                      weight_decay=5e-4, vflip=True)
_PAPER_SUPCON = RunConfig(method="supcon", epochs=500, batch_size=1024, lr=0.05,
                          lr_schedule="constant", weight_decay=4e-4, head_epochs=100,
                          head_batch_size=256, head_lr=0.1, head_lr_schedule="cosine")

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="The protocol exactly: WRN-16-2, full CIFAR-10, 30 seeds. GPU work.",
        ce=_PAPER_CE, supcon=_PAPER_SUPCON, seeds=30, sparsities=(0.3, 0.5, 0.7, 0.9, 0.95),
        pd_models=5, pd_train_images=None),
    "cpu": Preset(
        name="cpu",
        description=("Laptop scale, sized for about an hour on 2 CPU cores: WRN-10-1 on 200 "
                     "images/class, full test set, 4 seeds, 12-epoch cosine schedules."),
        ce=replace(_PAPER_CE, depth=10, width=1, train_per_class=200, epochs=12, vflip=False,
                   finetune_epochs=3),
        supcon=replace(_PAPER_SUPCON, depth=10, width=1, train_per_class=200, epochs=12,
                       batch_size=128, lr=0.1, lr_schedule="cosine", head_epochs=3,
                       head_batch_size=128, finetune_epochs=3),
        seeds=4, sparsities=(0.5, 0.9), onset_begins=(0.5,), onset_sparsity=0.9,
        pd_models=2, pd_train_images=None, umap_sparsity=0.9, headline_sparsity=0.9),
    "smoke": Preset(
        name="smoke",
        description="The whole pipeline in minutes: WRN-10-1 on tiny data, 2 seeds, 1-2 epochs.",
        ce=replace(_PAPER_CE, depth=10, width=1, train_per_class=20, test_per_class=50, epochs=2,
                   batch_size=64, vflip=False, finetune_epochs=1),
        supcon=replace(_PAPER_SUPCON, depth=10, width=1, train_per_class=20, test_per_class=50,
                       epochs=2, batch_size=64, head_epochs=1, head_batch_size=64,
                       finetune_epochs=1),
        seeds=2, sparsities=(0.5, 0.9), onset_begins=(0.4,), onset_sparsity=0.9,
        pd_models=2, knn_k=5, umap_sparsity=0.9, headline_sparsity=0.9),
}


def get_preset(name: str, dataset: str | None = None, synthetic_size: int = 200) -> Preset:
    """A named preset; ``dataset="synthetic"`` swaps its data for synthetic images (tests, CI)."""
    _choice("preset", name, tuple(PRESETS))
    p = PRESETS[name]
    if dataset is not None:
        _choice("dataset", dataset, DATASETS)
        kw: dict[str, Any] = {"dataset": dataset}
        if dataset == "synthetic":
            kw.update(synthetic_size=synthetic_size, train_per_class=None, test_per_class=None)
        p = replace(p, ce=replace(p.ce, **kw), supcon=replace(p.supcon, **kw))
    return p
