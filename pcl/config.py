"""Run configuration, validation, hashing, and what a preset (one study) is.

A :class:`RunConfig`'s hash names its run's folder (docs/ARCHITECTURE.md, "Parameters and run
names"); a ``method`` or ``pruning`` schedule means what its :mod:`pcl.registry` entry says.
The named presets are in :mod:`pcl.presets`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any

from .registry import METHODS, SCHEDULES, Entry

#: Scopes of a magnitude prune: one threshold over all prunable weights, or per tensor.
SCOPES = ("global", "layerwise")
LR_SCHEDULES = ("constant", "cosine", "step")
DATASETS = ("cifar10", "synthetic")
PRECISIONS = ("fp32", "bf16")


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the value and what is."""


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _method(name: str) -> Any:
    _choice("method", name, METHODS.names())
    return METHODS.get(name)


def _schedule(name: str) -> Any:
    _choice("pruning schedule", name, SCHEDULES.names())
    return SCHEDULES.get(name)


@dataclass(frozen=True)
class RunConfig:
    """Every hyperparameter of one run; :func:`canonical` resets the fields its method and
    schedule do not own, so they never change its hash."""

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
    # the run's method's and schedule's own hparams (registry.Entry.hparams) that differ from
    # their defaults, as sorted (name, value) pairs; read them with :meth:`hp`
    hparams: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        validate(self)

    def entries(self) -> tuple[Entry, Entry]:
        """(method entry, schedule entry) of this run."""
        return _method(self.method), _schedule(self.pruning)

    def hp(self, name: str) -> Any:
        """The value of hparam ``name`` of the run's method or schedule (its default unless set)."""
        given = dict(self.hparams)
        for e in self.entries():
            if name in e.hparams:
                return given.get(name, e.hparams[name])
        raise ConfigError(f"{name!r} is no hparam of method {self.method!r} or schedule "
                          f"{self.pruning!r}; theirs: {sorted(_own_hparams(self))}")

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
        d["hparams"] = [[k, list(v) if isinstance(v, tuple) else v] for k, v in self.hparams]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config fields {sorted(unknown)}")
        d = dict(d)
        if "lr_milestones" in d:
            d["lr_milestones"] = tuple(d["lr_milestones"])
        if "hparams" in d:
            d["hparams"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in d["hparams"])
        return cls(**d)

    def run_hash(self) -> str:
        """A 12-hex-digit hash of the fields that differ from their defaults: the run's folder name.
        As in open_lth, a field added later with a default never renames a stored run; the price:
        a default, once released, must never change (that would rename runs silently)."""
        default = RunConfig().to_dict()
        diff = {k: v for k, v in self.to_dict().items() if v != default[k]}
        blob = json.dumps(diff, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _own_hparams(cfg: RunConfig) -> dict[str, Any]:
    """Default of every hparam of ``cfg``'s method and schedule."""
    method, schedule = cfg.entries()
    return method.hparams | schedule.hparams


def canonical(cfg: RunConfig, **hparams: Any) -> RunConfig:
    """``cfg`` (with ``hparams`` set) as the run it is, so equal runs hash equally: every field
    other entries own (and ``synthetic_size`` off synthetic data) at its default, and only its
    own hparams that differ from their defaults kept."""
    method, schedule = cfg.entries()
    unused = (METHODS.owned() | SCHEDULES.owned()) - set(method.owns + schedule.owns)
    if cfg.dataset != "synthetic":
        unused.add("synthetic_size")
    own = method.hparams | schedule.hparams
    unknown = set(hparams) - set(own)
    if unknown:
        raise ConfigError(f"unknown hparams {sorted(unknown)} for method {cfg.method!r} and "
                          f"schedule {cfg.pruning!r}; theirs: {sorted(own)}")
    hp = {k: v for k, v in (dict(cfg.hparams) | hparams).items() if k in own and v != own[k]}
    d = RunConfig()
    return replace(cfg, hparams=tuple(sorted(hp.items())), **{f: getattr(d, f) for f in unused})


def dense_parent(cfg: RunConfig) -> RunConfig:
    """The same run without pruning: the dense run a one-shot run starts from."""
    own = _method(cfg.method).hparams
    return canonical(replace(cfg, pruning="none", sparsity=0.0,
                             hparams=tuple(p for p in cfg.hparams if p[0] in own)))


def _check_types(c: RunConfig) -> None:
    """Every field has the type its annotation names (ints are not bools or floats; floats are
    finite real numbers; ``X | None`` allows None), so a typo like ``epochs=2.5`` fails loudly."""
    for f in dataclasses.fields(c):
        v, ann = getattr(c, f.name), str(f.type)
        if v is None and ann.endswith("| None"):
            continue
        ann = ann.removesuffix("| None").strip()
        real = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = {"int": real and isinstance(v, int), "float": real and math.isfinite(v),
              "str": isinstance(v, str), "bool": isinstance(v, bool),
              "tuple[float, ...]": isinstance(v, tuple) and all(
                  isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)}.get(ann, True)
        if not ok:
            what = "a finite number" if ann == "float" else ann
            raise ConfigError(f"{f.name} must be {what}; got {v!r} ({type(v).__name__})")


def _check_hparams(c: RunConfig) -> None:
    """Every hparam is one of the run's method's or schedule's, of its default's type."""
    own = _own_hparams(c)
    for pair in c.hparams:
        if not (isinstance(pair, tuple) and len(pair) == 2 and pair[0] in own):
            raise ConfigError(f"hparams must be (name, value) pairs with names in {sorted(own)} "
                              f"(method {c.method!r}, schedule {c.pruning!r}); got {pair!r}")
        if type(pair[1]) is not type(own[pair[0]]):
            raise ConfigError(f"hparam {pair[0]!r} must be a {type(own[pair[0]]).__name__} like its "
                              f"default {own[pair[0]]!r}; got {pair[1]!r}")


#: (fields, allowed-value test, what is allowed): the range checks of :func:`validate`, in order.
_RANGES: tuple[tuple[tuple[str, ...], Any, str], ...] = (
    (("width", "epochs", "batch_size", "head_batch_size", "finetune_batch_size", "gmp_events",
      "proj_dim"), lambda v: v >= 1, "must be a positive integer"),
    (("num_classes",), lambda v: v >= 2, "must be at least 2"),
    (("seed",), lambda v: v >= 0, "must be a non-negative integer"),
    (("lr", "head_lr", "finetune_lr", "temperature", "base_temperature"), lambda v: v > 0,
     "must be positive"),
    (("weight_decay", "head_weight_decay", "finetune_weight_decay"), lambda v: v >= 0, "must be >= 0"),
    (("momentum", "sparsity"), lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    (("synthetic_size",), lambda v: v >= 0, "must be >= 0"),
    (("gmp_begin", "gmp_end"), lambda v: 0.0 <= v <= 1.0,
     "is a fraction of the run's steps and must be in [0, 1]"),
    (("train_per_class", "test_per_class"), lambda v: v is None or v >= 1,
     "must be a positive integer or None"),
)
_CHOICES = (("precision", PRECISIONS), ("dataset", DATASETS), ("lr_schedule", LR_SCHEDULES),
            ("gmp_scope", SCOPES), ("oneshot_scope", SCOPES), ("head_lr_schedule", LR_SCHEDULES))


def validate(c: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value and what is allowed."""
    _check_types(c)
    method, schedule = c.entries()
    for name, allowed in _CHOICES:
        _choice(name, getattr(c, name), allowed)
    if c.depth < 10 or (c.depth - 4) % 6:
        raise ConfigError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...); got {c.depth}")
    for names, ok, allowed in _RANGES:
        for name in names:
            if not ok(getattr(c, name)):
                raise ConfigError(f"{name} {allowed}; got {getattr(c, name)}")
    if (c.pruning == "none") != (c.sparsity == 0.0):
        raise ConfigError(f"sparsity {c.sparsity} given with pruning={c.pruning!r}: 'none' takes 0.0, "
                          f"every other schedule ({', '.join(n for n in SCHEDULES.names() if n != 'none')})"
                          " a sparsity in (0, 1)")
    if c.dataset == "synthetic" and c.synthetic_size < c.num_classes:
        raise ConfigError(f"synthetic_size must be at least num_classes; got {c.synthetic_size}")
    if any(not (0 < m < 1) for m in c.lr_milestones):
        raise ConfigError(f"lr_milestones are fractions in (0, 1); got {c.lr_milestones}")
    method.validate(c)
    schedule.validate(c)
    _check_hparams(c)


# --- presets --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A whole study: base configs per method, populations, pruning grid and evaluation. Every
    method in ``methods`` starts from the base config (``ce`` or ``supcon``) its registry entry
    names (``Method.like``: SimCLR from ``supcon``), with its own name."""

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
    # schedules whose runs (at onset_sparsity) are also points of the onset curve, e.g. gmp_early
    # when its window has the sweep's duration: the sweep then starts at its begin
    onset_points_from: tuple[str, ...] = ()
    pd_models: int = 5  # models per population for prediction depth
    pd_train_images: int | None = None  # training images used to fit the probes; None = all
    knn_k: int = 30
    umap_sparsity: float = 0.95
    headline_sparsity: float = 0.9  # "high sparsity" for F3, F4, F8 and the claims
    reference: str = "ce"  # the method the others are compared with (claims, figures)
    contrast: tuple[str, str] = ("gmp_early", "gmp_late")  # claim 3's early-vs-late schedule pair

    def __post_init__(self) -> None:
        _method(self.reference)
        for name in self.onset_points_from + self.contrast:
            _schedule(name)

    def base(self, method: str) -> RunConfig:
        """The base config of ``method``: the preset's ``ce`` or ``supcon`` config it is like."""
        like = getattr(self, _method(method).like)
        return like if like.method == method else replace(like, method=method, hparams=())

    def run(self, method: str, seed: int, pruning: str = "none", sparsity: float = 0.0,
            **overrides: Any) -> RunConfig:
        """The config of one run of this study; ``overrides`` set config fields and the method's
        or schedule's own hparams."""
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        hp = {k: v for k, v in overrides.items() if k not in fields}
        cfg = replace(self.base(method), seed=seed, pruning=pruning, sparsity=sparsity,
                      **{k: v for k, v in overrides.items() if k in fields})
        return canonical(cfg, **hp)

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


def resolve_device(device: Any = None):
    """``device`` as a ``torch.device``; None: CUDA when available, else the CPU. The one place
    that picks a default device (training, evaluation and the k-NN probes all use it)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: str | None = None) -> bool:
    """Does ``device`` (default: :func:`resolve_device`'s) compute bf16 natively? CUDA GPUs do; a
    CPU with avx512_bf16 or AMX does (bf16 autocast then trains about 2x faster than fp32;
    elsewhere it is emulated and slower, so fp32 is used)."""
    import torch

    if resolve_device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_precision(precision: str = "auto") -> str:
    """'auto' -> 'bf16' where the hardware computes it natively, else 'fp32'."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    _choice("precision", precision, ("auto",) + PRECISIONS)
    return precision
