"""A whole study: which runs a preset needs, and running them (resumably, in parallel).

Each run is :func:`pcl.train.train_run` of one config, a pure function of it: finished runs are
loaded from the store, partial ones resume; :func:`run_all` hands them to :mod:`pcl.executors`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import torch

from . import schedules
from .config import Preset, RunConfig
from .executors import run
from .presets import get_preset
from .store import RunStore


def _stage_schedules(preset: Preset, stage: str) -> list[schedules.Schedule]:
    """The schedules ``stage`` plans for ``preset``: those the preset lists, in its order, then
    those every study plans (dense, the onset sweep)."""
    listed = [schedules.get(n) for n in preset.schedules]
    always = [s for s in schedules.SCHEDULES if s.always and s.name not in preset.schedules]
    return [s for s in listed + always if s.stage == stage]


def plan(preset: Preset, stage: str = "all", methods: Iterable[str] | None = None) -> list[RunConfig]:
    """Every run config of ``stage`` (one of :func:`pcl.schedules.stages`: 'dense', 'floor', 'gmp',
    'oneshot', 'onset'; or 'all'), in order, parents before their children ('all' plans dense
    before any stage that needs it); ``methods`` defaults to the preset's."""
    all_stages = schedules.stages()
    if stage != "all" and stage not in all_stages:
        raise ValueError(f"unknown stage {stage!r}; allowed: 'all', {', '.join(map(repr, all_stages))}")
    methods = tuple(preset.methods if methods is None else methods)
    out: list[RunConfig] = []
    for st in all_stages if stage == "all" else (stage,):
        for m in methods:
            if st == "floor":  # seeds S..2S-1, independent of the dense seeds 0..S-1
                out += [preset.run(m, s) for s in range(preset.seeds, 2 * preset.seeds) if preset.noise_floor]
            else:
                scheds = _stage_schedules(preset, st)
                out += [c for s in range(preset.seeds) for sch in scheds for c in sch.configs(preset, m, s)]
    return out


def default_workers() -> int:
    """Worker processes of the local executor: one per visible GPU (``workers_per_gpu`` puts
    several runs on one), else one per core, at most 4 (one thread each: on a small CPU that
    beats one process with several threads; README, "Speed")."""
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def train_stages(ws: Workspace, stages: Sequence[str], executor: str = "local",
                 executor_options: dict | None = None) -> list[dict]:
    """A training notebook's one call: every run of ``stages`` (planned for the workspace's
    preset) trained with :func:`run_all`, with a line on what was already stored and trained."""
    configs = [c for st in stages for c in plan(ws.preset, st)]
    print(f"{len(configs)} runs of stages {', '.join(stages)}, "
          f"{sum(ws.store.is_done(c) for c in configs)} already stored")
    new = run_all(configs, ws.store, ws.data_root, executor=executor, executor_options=executor_options)
    print(f"{sum(r['trained'] for r in new)} runs trained by this call, "
          f"{sum(not r['trained'] for r in new)} finished meanwhile by other workers")
    return new


def run_all(configs: list[RunConfig], store: RunStore, data_root: str | None = None,
            workers: int | None = None, progress: bool = True, executor: str = "local",
            executor_options: dict | None = None) -> list[dict]:
    """Finish every config not yet finished in ``store`` (a run after its parent); one progress bar.

    ``executor``: 'local' (``workers`` processes here, default :func:`default_workers`),
    'submitit-local' (a submitit job per run, at most ``workers`` at once) or 'slurm' (job
    arrays). ``executor_options``: the names :mod:`pcl.executor_options` lists (``COMMON_OPTIONS``,
    ``LOCAL_OPTIONS``, ``SUBMITIT_OPTIONS``), checked before any run starts; ``stale_after``: seconds
    before an unrefreshed run lease may be taken over. Every run trains under a lease
    (:mod:`pcl.lease`), so concurrent calls on one store train each run once. Returns one
    ``{'hash', 'test_acc', 'sparsity', 'trained'}`` per run unfinished when called; raises
    :class:`pcl.executors.RunsFailedError` after the other runs when some run failed.
    """
    return run(configs, store, data_root, workers or default_workers(), progress, executor, executor_options)


@dataclass
class Workspace:
    """Where a study lives: its preset, run store, data root and output folders."""

    preset: Preset
    store: RunStore
    data_root: str | None
    figures: Path
    results: Path

    def label(self) -> str:
        return self.preset.label()


def resolve_preset_name(name: str = "auto") -> tuple[str, str]:
    """(preset name, reason): 'auto' is 'paper' with a CUDA GPU, else 'cpu'."""
    if name != "auto":
        return name, "asked for"
    if torch.cuda.is_available():
        return "paper", f"a CUDA GPU is present ({torch.cuda.get_device_name(0)})"
    return "cpu", "no CUDA GPU found"


def workspace(preset: str = "auto", dataset: str | None = None, runs: str | Path = "runs",
              data_root: str | None = None, figures: str | Path = "figures",
              results: str | Path = "results", verbose: bool = True) -> Workspace:
    """A notebook's parameters resolved into a :class:`Workspace` (output folders per preset);
    ``dataset='synthetic'`` swaps the preset's data for synthetic images (tests and CI)."""
    name, why = resolve_preset_name(preset)
    p = get_preset(name, dataset=dataset)
    tag = name if dataset != "synthetic" else f"{name}-synthetic"
    ws = Workspace(p, RunStore(runs), data_root, Path(figures) / tag, Path(results) / tag)
    ws.figures.mkdir(parents=True, exist_ok=True)
    ws.results.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 140)  # notebooks display wide tables
    if verbose:
        print(f"preset {name!r} ({why}); {p.label()}")
        print(f"runs: {ws.store.root}  figures: {ws.figures}  tables: {ws.results}")
    return ws
