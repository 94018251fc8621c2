"""Run configuration, validation, hashing and the named presets.

One frozen :class:`RunConfig` describes one training run completely; its hash names the run's
folder in the run store (as open_lth does). A :class:`Preset` describes a whole study: its
methods and their base configs, the seeds, sparsities, schedules and evaluation settings.

What a ``method`` or a ``pruning`` schedule means (its allowed names, the fields it does not use,
a run's parent) is read from the registries :mod:`pcl.methods` and :mod:`pcl.schedules`. They sit
above this module (a method builds models), so it imports them inside functions.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any

from .schedules import SCOPES  # torch-free: schedules imports nothing of pcl at load

LR_SCHEDULES = ("constant", "cosine", "step")
DATASETS = ("cifar10", "synthetic")
PRECISIONS = ("fp32", "bf16")


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the value and what is."""


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _method(name: str):
    """The registered method ``name`` (:mod:`pcl.methods`), or a ConfigError naming the allowed."""
    from . import methods

    _choice("method", name, methods.names())
    return methods.get(name)


def _schedule(name: str):
    """The registered pruning schedule ``name`` (:mod:`pcl.schedules`), or a ConfigError."""
    from . import schedules

    _choice("pruning schedule", name, schedules.names())
    return schedules.get(name)


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
    # training precision: "bf16" autocast where the hardware computes bf16 natively, else "fp32"
    # (evaluation is always fp32); presets resolve "auto" to one of these before a run exists
    precision: str = "fp32"
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
    finetune_weight_decay: float = 0.0  # as the original
    finetune_head_only: bool = False
    oneshot_scope: str = "global"

    def __post_init__(self) -> None:
        validate(self)

    # --- derived -----------------------------------------------------------------------------
    @property
    def gmp_window(self) -> tuple[float, float] | None:
        """(begin, end) of the GMP schedule as fractions of the run's optimiser steps (None for
        a schedule without one)."""
        return _schedule(self.pruning).window(self)

    @property
    def schedule(self) -> str:
        """A short human label: dense, gmp_early, gmp_late, gmp@0.40-0.59, oneshot."""
        return _schedule(self.pruning).label(self)

    def parent(self) -> "RunConfig | None":
        """The finished run this run starts from, as its schedule says (one-shot: the dense run
        of the same seed); None for a run that starts from its initialisation."""
        return _schedule(self.pruning).parent(self)

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
        """A 12-hex-digit hash of the fields that differ from their defaults: the run's folder name.

        As in open_lth, a field added later with a default never renames a stored run. The price:
        a default, once released, must never change (that would rename runs silently).
        """
        default = RunConfig().to_dict()
        diff = {k: v for k, v in self.to_dict().items() if v != default[k]}
        blob = json.dumps(diff, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def canonical(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every field the run does not use reset to its default (so hashes match):
    the fields its method and its schedule declare unused, and the data fields of other datasets."""
    d = RunConfig()
    unused = list(_schedule(cfg.pruning).unused) + list(_method(cfg.method).unused)
    if cfg.dataset != "synthetic":
        unused += ["synthetic_size"]
    return replace(cfg, **{f: getattr(d, f) for f in unused})


def dense_parent(cfg: RunConfig) -> RunConfig:
    """The same run without pruning: the dense run a one-shot run starts from."""
    return canonical(replace(cfg, pruning="none", sparsity=0.0))


def _check_types(c: RunConfig) -> None:
    """Every field has the type its annotation names (ints are not bools or floats; floats are
    finite real numbers; ``X | None`` allows None), so a typo like ``epochs=2.5`` fails loudly."""
    for f in dataclasses.fields(c):
        v, ann = getattr(c, f.name), str(f.type)
        if ann.endswith("| None"):
            if v is None:
                continue
            ann = ann[: -len("| None")].strip()
        ok = {"int": isinstance(v, int) and not isinstance(v, bool),
              "float": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              "str": isinstance(v, str),
              "bool": isinstance(v, bool),
              "tuple[float, ...]": isinstance(v, tuple) and all(
                  isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)}.get(ann, True)
        if not ok:
            what = "a finite number" if ann == "float" else ann
            raise ConfigError(f"{f.name} must be {what}; got {v!r} ({type(v).__name__})")


def validate(c: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value and what is allowed."""
    _check_types(c)
    _choice("precision", c.precision, PRECISIONS)
    method = _method(c.method)
    schedule = _schedule(c.pruning)
    _choice("dataset", c.dataset, DATASETS)
    _choice("lr_schedule", c.lr_schedule, LR_SCHEDULES)
    _choice("gmp_scope", c.gmp_scope, SCOPES)
    _choice("oneshot_scope", c.oneshot_scope, SCOPES)
    _choice("head_lr_schedule", c.head_lr_schedule, LR_SCHEDULES)
    if c.depth < 10 or (c.depth - 4) % 6:
        raise ConfigError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...); got {c.depth}")
    if c.width < 1:
        raise ConfigError(f"width must be a positive integer; got {c.width}")
    for name in ("epochs", "batch_size", "head_batch_size", "finetune_batch_size", "gmp_events",
                 "proj_dim"):
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be a positive integer; got {getattr(c, name)}")
    if c.num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2; got {c.num_classes}")
    if c.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {c.seed}")
    for name in ("lr", "head_lr", "finetune_lr", "temperature", "base_temperature"):
        if getattr(c, name) <= 0:
            raise ConfigError(f"{name} must be positive; got {getattr(c, name)}")
    for name in ("weight_decay", "head_weight_decay", "finetune_weight_decay"):
        if getattr(c, name) < 0:
            raise ConfigError(f"{name} must be >= 0; got {getattr(c, name)}")
    if not (0.0 <= c.momentum < 1.0):
        raise ConfigError(f"momentum must be in [0, 1); got {c.momentum}")
    if c.synthetic_size < 0:
        raise ConfigError(f"synthetic_size must be >= 0; got {c.synthetic_size}")
    method.validate(c)
    if not (0.0 <= c.sparsity < 1.0):
        raise ConfigError(f"sparsity must be in [0, 1); got {c.sparsity}")
    if c.pruning == "none" and c.sparsity != 0.0:
        from .schedules import names

        raise ConfigError(f"sparsity {c.sparsity} given with pruning='none'; choose a pruning schedule "
                          f"from {tuple(n for n in names() if n != 'none')}")
    if c.pruning != "none" and c.sparsity == 0.0:
        raise ConfigError(f"pruning={c.pruning!r} needs a sparsity in (0, 1); got 0.0")
    for name in ("gmp_begin", "gmp_end"):
        v = getattr(c, name)
        if not (0.0 <= v <= 1.0):
            raise ConfigError(f"{name} is a fraction of the run's steps and must be in [0, 1]; got {v}")
    schedule.validate(c)
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
    """A whole study: base configs per method, populations, pruning grid and evaluation.

    ``ce`` and ``supcon`` are the two base configs; every method in ``methods`` starts from the
    one its registry entry names (``Method.like``: SimCLR from ``supcon``), with its own name.
    """

    name: str
    description: str
    ce: RunConfig
    supcon: RunConfig
    seeds: int
    sparsities: tuple[float, ...]
    methods: tuple[str, ...] = ("ce", "supcon")
    schedules: tuple[str, ...] = ("gmp_early", "gmp_late", "oneshot")
    noise_floor: bool = True  # a second dense population (seeds S..2S-1) per method
    precision: str = "fp32"  # training precision of every run; "auto": bf16 where native (get_preset)
    onset_begins: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4, 0.6)
    onset_duration: float = 0.2375  # same length as gmp_early
    onset_sparsity: float = 0.9
    pd_models: int = 5  # models per population for prediction depth
    pd_train_images: int | None = None  # training images used to fit the probes; None = all
    knn_k: int = 30
    umap_sparsity: float = 0.95
    headline_sparsity: float = 0.9  # "high sparsity" for F3, F4, F8 and the claims

    def base(self, method: str) -> RunConfig:
        """The base config of ``method``: the preset's ``ce`` or ``supcon`` config it is like."""
        like = getattr(self, _method(method).like)
        return like if like.method == method else replace(like, method=method)

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
        floor = f" (+{self.seeds} noise floor)" if self.noise_floor else ""
        return (f"preset '{self.name}': WRN-{c.depth}-{c.width}, {data}, {self.seeds} seeds{floor}, "
                f"CE {c.epochs} ep, SupCon {self.supcon.epochs}+{self.supcon.head_epochs} ep, "
                f"{self.precision} training" + "".join(f", {m}" for m in self.methods
                                                       if m not in ("ce", "supcon")))


_PAPER_CE = RunConfig(method="ce", epochs=205, batch_size=128, lr=0.1, lr_schedule="cosine",
                      weight_decay=5e-4, vflip=True)
_PAPER_SUPCON = RunConfig(method="supcon", epochs=500, batch_size=1024, lr=0.05,
                          lr_schedule="constant", weight_decay=4e-4, head_epochs=100,
                          head_batch_size=256, head_lr=0.1, head_lr_schedule="cosine",
                          vflip=True)  # vflip: the head and one-shot fine-tuning are CE-style

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="The protocol exactly: WRN-16-2, full CIFAR-10, 30 seeds. GPU work.",
        ce=_PAPER_CE, supcon=_PAPER_SUPCON, seeds=30, sparsities=(0.3, 0.5, 0.7, 0.9, 0.95),
        pd_models=5, pd_train_images=None, precision="auto"),
    "cpu": Preset(
        name="cpu",
        description=("Sized for evidence in about 90 minutes on 2 CPU cores: WRN-10-1 on the full "
                     "training set, 5 seeds + a 5-seed noise floor, CE 2 epochs, SupCon 3+1 epochs, "
                     "bf16 training where native."),
        ce=replace(_PAPER_CE, depth=10, width=1, epochs=2, vflip=False, finetune_epochs=1),
        supcon=replace(_PAPER_SUPCON, depth=10, width=1, epochs=3, batch_size=128, lr=0.02,
                       lr_schedule="cosine", head_epochs=1, head_batch_size=128, finetune_epochs=1,
                       vflip=False),
        seeds=5, sparsities=(0.9,), onset_begins=(0.3875, 0.7625), onset_sparsity=0.9,
        pd_models=3, pd_train_images=10000, umap_sparsity=0.9, headline_sparsity=0.9,
        precision="auto"),
    "smoke": Preset(
        name="smoke",
        description="The whole pipeline in minutes: WRN-10-1 on tiny data, 2 seeds, 1-2 epochs.",
        ce=replace(_PAPER_CE, depth=10, width=1, train_per_class=20, test_per_class=50, epochs=2,
                   batch_size=64, vflip=False, finetune_epochs=1),
        supcon=replace(_PAPER_SUPCON, depth=10, width=1, train_per_class=20, test_per_class=50,
                       epochs=2, batch_size=64, head_epochs=1, head_batch_size=64,
                       finetune_epochs=1, vflip=False),
        seeds=2, sparsities=(0.5, 0.9), onset_begins=(0.4,), onset_sparsity=0.9,
        pd_models=2, knn_k=5, umap_sparsity=0.9, headline_sparsity=0.9),
}


#: Beyond the paper: SimCLR as a third method (PROTOCOL.md), at the paper's scale and at smoke scale.
PRESETS["extended"] = replace(
    PRESETS["paper"], name="extended", methods=("ce", "supcon", "simclr"),
    description="The paper preset plus SimCLR (NT-Xent, labels unused) as a third learning method.")
PRESETS["smoke-extended"] = replace(
    PRESETS["smoke"], name="smoke-extended", methods=("ce", "supcon", "simclr"),
    description="The smoke preset plus SimCLR: the three-method pipeline in minutes (tests, CI).")


def resolve_device(device: Any = None):
    """``device`` as a ``torch.device``; None: CUDA when available, else the CPU. The one place
    that picks a default device (training, evaluation and the k-NN probes all use it)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: str | None = None) -> bool:
    """Does ``device`` (default: CUDA if present, else the CPU) compute bf16 natively?

    CUDA GPUs do; a CPU does when it has avx512_bf16 or AMX (there bf16 autocast trains about 2x
    faster than fp32; elsewhere it is emulated and slower, so fp32 is used).
    """
    import torch

    if resolve_device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_precision(precision: str = "auto", device: str | None = None) -> str:
    """'auto' -> 'bf16' where the hardware computes it natively, else 'fp32'."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    _choice("precision", precision, ("auto",) + PRECISIONS)
    return precision


def get_preset(name: str, dataset: str | None = None, synthetic_size: int = 200,
               precision: str | None = None, methods: tuple[str, ...] | None = None) -> Preset:
    """A named preset; ``dataset="synthetic"`` swaps its data for synthetic images (tests, CI).

    ``precision`` ('auto', 'fp32' or 'bf16') sets every run's training precision; None keeps the
    preset's ('auto' for cpu and paper: bf16 where the hardware computes it natively, else fp32;
    'fp32' for smoke, so tests give the same runs on every machine). The precision is part of each
    run's config, so it names a different run. ``methods`` replaces the preset's methods (any
    registered in :mod:`pcl.methods`), e.g. ``("ce", "supcon", "simclr")``.
    """
    _choice("preset", name, tuple(PRESETS))
    p = PRESETS[name]
    if methods is not None:
        p = replace(p, methods=tuple(methods))
    for m in p.methods:
        _method(m)  # an unknown method fails here, naming the registered ones
    prec = resolve_precision(precision or p.precision)
    p = replace(p, precision=prec, ce=replace(p.ce, precision=prec),
                supcon=replace(p.supcon, precision=prec))
    if dataset is not None:
        _choice("dataset", dataset, DATASETS)
        kw: dict[str, Any] = {"dataset": dataset}
        if dataset == "synthetic":
            kw.update(synthetic_size=synthetic_size, train_per_class=None, test_per_class=None)
        p = replace(p, ce=replace(p.ce, **kw), supcon=replace(p.supcon, **kw))
    return p
