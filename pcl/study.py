"""A whole study: which runs a preset needs, and running them (resumably, in parallel).

The unit of work is :func:`pcl.train.train_run` of one config, a pure function of that config:
finished runs are loaded from the store, partial ones resume. :func:`run_all` hands the runs to an
executor (:mod:`pcl.executors`): local worker processes (on CPU one thread each, which on a small
CPU beats one process with several threads: see the README's benchmark), submitit jobs, or SLURM.
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


def onset_configs(preset: Preset, method: str, seed: int) -> list[RunConfig]:
    """The pruning-onset sweep: the configs of every schedule that declares itself the sweep
    (``OnsetGMP``: GMP starting at each of ``onset_begins``, fixed duration)."""
    return [c for s in schedules.SCHEDULES if s.sweep for c in s.configs(preset, method, seed)]


def floor_seeds(preset: Preset) -> range:
    """Seeds of the noise-floor population: S..2S-1, independent of the dense seeds 0..S-1."""
    return range(preset.seeds, 2 * preset.seeds) if preset.noise_floor else range(0)


def _stage_schedules(preset: Preset, stage: str) -> list[schedules.Schedule]:
    """The schedules ``stage`` plans for ``preset``: those the preset lists, in its order, then
    those every study plans (dense, the onset sweep)."""
    listed = [schedules.get(n) for n in preset.schedules]
    always = [s for n, s in ((n, schedules.get(n)) for n in schedules.names())
              if s.always and n not in preset.schedules]
    return [s for s in listed + always if s.stage == stage]


def plan(preset: Preset, stage: str = "all", methods: Iterable[str] | None = None) -> list[RunConfig]:
    """Every run config of ``stage`` (one of :func:`pcl.schedules.stages`: 'dense', 'floor',
    'gmp', 'oneshot', 'onset', or 'all'), in order; ``methods`` defaults to the preset's.

    Parents come before their children ('all' plans dense before any stage that needs it).
    """
    all_stages = schedules.stages()
    if stage != "all" and stage not in all_stages:
        raise ValueError(f"unknown stage {stage!r}; allowed: 'all', {', '.join(map(repr, all_stages))}")
    methods = tuple(preset.methods if methods is None else methods)
    out: list[RunConfig] = []
    for st in all_stages if stage == "all" else (stage,):
        for m in methods:
            if st == "floor":
                out += [preset.run(m, seed) for seed in floor_seeds(preset)]
                continue
            scheds = _stage_schedules(preset, st)
            for seed in range(preset.seeds):
                for sch in scheds:
                    out += sch.configs(preset, m, seed)
    return out


def default_workers() -> int:
    """Worker processes of the local executor. CUDA: one per visible GPU (``workers_per_gpu`` in
    ``executor_options`` puts several runs on one GPU; not measured yet). CPU: one per core, at
    most 4 (one thread each: on a small CPU that beats one process with several threads)."""
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
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
    """Finish every config not yet finished in ``store``; one progress bar over the runs.

    ``executor``: 'local' (worker processes on this machine, ``workers`` of them, default
    :func:`default_workers`), 'submitit-local' (each run a submitit job on this machine, at most
    ``workers`` at once) or 'slurm' (job arrays on a SLURM cluster). ``executor_options``:
    ``threads``, ``device``, ``stale_after`` (seconds before an unrefreshed run lease may be taken
    over), ``poll`` (seconds between checks); for submitit also ``folder`` (job logs), ``time``
    (limit per job: minutes or SLURM time), ``gpus`` (per job), ``partition``,
    ``array_parallelism``, ``extra`` (sbatch parameters, e.g. 'account=abc,mem=32G'),
    ``max_requeues``, ``max_jobs``; speed options ``cudnn_benchmark``, ``compile`` (both off by
    default) and, for the local executor on CUDA, ``workers_per_gpu`` (default 1). Each run
    trains under a lease (:mod:`pcl.lease`), so several ``run_all`` calls on one store, on one
    machine or many, train every run once. A run whose
    parent run (one-shot: its dense run) is not finished waits for it. Returns one summary
    ``{'hash', 'test_acc', 'sparsity', 'trained'}`` per run not finished when called; raises
    :class:`pcl.executors.RunsFailedError` (after the other runs) when some run failed.
    """
    return run(configs, store, data_root, workers or default_workers(), progress, executor,
               executor_options)


# ------------------------------------------------------------------------------------------------
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
    """Resolve a notebook's parameters into a :class:`Workspace` (output folders per preset).

    ``dataset='synthetic'`` swaps the preset's data for synthetic images (tests and CI).
    """
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
