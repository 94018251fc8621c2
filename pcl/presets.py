"""The named presets (studies) and :func:`get_preset`; :class:`pcl.config.Preset` says what each
field means. Above the registries: every base config is validated against them on import.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

# the registries' entries the presets' configs are validated against
from . import methods as _methods  # noqa: F401
from . import schedules as _schedules  # noqa: F401
from .config import DATASETS, Preset, RunConfig, _choice, _method, resolve_precision

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
        pd_models=5, pd_train_images=None, precision="auto", onset_points_from=("gmp_early",)),
    "cpu": Preset(
        name="cpu",
        description=("Sized for evidence in about 90 minutes on 2 CPU cores, with the methods' dense "
                     "accuracies matched: WRN-10-1 on the full training set, 5 seeds + a 5-seed noise "
                     "floor, CE 1 epoch (batch 240), SupCon 3+1 epochs (lr 0.05, temperature 0.1), "
                     "early GMP, one-shot, a 4-point onset sweep, bf16 training where native."),
        ce=replace(_PAPER_CE, depth=10, width=1, epochs=1, batch_size=240, vflip=False, finetune_epochs=1),
        supcon=replace(_PAPER_SUPCON, depth=10, width=1, epochs=3, batch_size=128, lr=0.05,
                       lr_schedule="cosine", temperature=0.1, head_epochs=1, head_batch_size=128,
                       finetune_epochs=1, vflip=False),
        seeds=5, schedules=("gmp_early", "oneshot"), sparsities=(0.9,), onset_begins=(0.2, 0.4, 0.6),
        onset_sparsity=0.9, pd_models=3, pd_train_images=10000, umap_sparsity=0.9,
        headline_sparsity=0.9, precision="auto", onset_points_from=("gmp_early",)),
    "smoke": Preset(
        name="smoke",
        description="The whole pipeline in minutes: WRN-10-1 on tiny data, 2 seeds, 1-2 epochs.",
        ce=replace(_PAPER_CE, depth=10, width=1, train_per_class=20, test_per_class=50, epochs=2,
                   batch_size=64, vflip=False, finetune_epochs=1),
        supcon=replace(_PAPER_SUPCON, depth=10, width=1, train_per_class=20, test_per_class=50, epochs=2,
                       batch_size=64, head_epochs=1, head_batch_size=64, finetune_epochs=1, vflip=False),
        seeds=2, sparsities=(0.5, 0.9), onset_begins=(0.4,), onset_sparsity=0.9, pd_models=2, knn_k=5,
        umap_sparsity=0.9, headline_sparsity=0.9, onset_points_from=("gmp_early",)),
}


#: Beyond the paper: SimCLR as a third method (PROTOCOL.md), at the paper's scale and at smoke scale.
PRESETS["extended"] = replace(
    PRESETS["paper"], name="extended", methods=("ce", "supcon", "simclr"),
    description="The paper preset plus SimCLR (NT-Xent, labels unused) as a third learning method.")
PRESETS["smoke-extended"] = replace(
    PRESETS["smoke"], name="smoke-extended", methods=("ce", "supcon", "simclr"),
    description="The smoke preset plus SimCLR: the three-method pipeline in minutes (tests, CI).")


def get_preset(name: str, dataset: str | None = None, synthetic_size: int = 200,
               precision: str | None = None, methods: tuple[str, ...] | None = None) -> Preset:
    """A named preset; ``dataset="synthetic"`` swaps its data for synthetic images (tests, CI).
    ``precision`` ('auto', 'fp32' or 'bf16'; None: the preset's, 'fp32' for smoke so tests give the
    same runs everywhere) is part of each run's config, so it names a different run. ``methods``
    replaces the preset's methods (any registered in :mod:`pcl.methods`)."""
    _choice("preset", name, tuple(PRESETS))
    p = PRESETS[name]
    if methods is not None:
        p = replace(p, methods=tuple(methods))
    for m in p.methods:
        _method(m)  # an unknown method fails here, naming the registered ones
    prec = resolve_precision(precision or p.precision)
    p = replace(p, precision=prec, ce=replace(p.ce, precision=prec), supcon=replace(p.supcon, precision=prec))
    if dataset is not None:
        _choice("dataset", dataset, DATASETS)
        kw: dict[str, Any] = {"dataset": dataset}
        if dataset == "synthetic":
            kw.update(synthetic_size=synthetic_size, train_per_class=None, test_per_class=None)
        p = replace(p, ce=replace(p.ce, **kw), supcon=replace(p.supcon, **kw))
    return p
