"""A whole study: which runs a preset needs, and running them (resumably, in parallel on CPU).

The unit of work is :func:`pcl.train.train_run` of one config, a pure function of that config:
finished runs are loaded from the store, partial ones resume. On CPU, ``workers`` processes with
one thread each train different runs at once (on a small CPU that beats one process with several
threads: see the README's benchmark); on CUDA runs go one after the other in this process.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .config import METHODS, Preset, RunConfig, get_preset
from .store import RunStore

STAGES = ("dense", "gmp", "oneshot", "onset")


def onset_configs(preset: Preset, method: str, seed: int) -> list[RunConfig]:
    """The pruning-onset sweep: GMP starting at each of ``onset_begins``, fixed duration."""
    out = []
    for b in preset.onset_begins:
        end = min(1.0, b + preset.onset_duration)
        out.append(preset.run(method, seed, "gmp", preset.onset_sparsity, gmp_begin=b, gmp_end=end))
    return out


def plan(preset: Preset, stage: str = "all", methods: Iterable[str] = METHODS) -> list[RunConfig]:
    """Every run config of ``stage`` ('dense', 'gmp', 'oneshot', 'onset' or 'all'), in order."""
    if stage != "all" and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; allowed: 'all', {', '.join(map(repr, STAGES))}")
    stages = STAGES if stage == "all" else (stage,)
    out: list[RunConfig] = []
    for st in stages:
        for m in methods:
            for seed in range(preset.seeds):
                if st == "dense":
                    out.append(preset.run(m, seed))
                elif st == "gmp":
                    out += [preset.run(m, seed, sch, s) for sch in preset.schedules
                            if sch.startswith("gmp") for s in preset.sparsities]
                elif st == "oneshot" and "oneshot" in preset.schedules:
                    out += [preset.run(m, seed, "oneshot", s) for s in preset.sparsities]
                elif st == "onset":
                    out += onset_configs(preset, m, seed)
    return out


def _worker(cfg_dict: dict, store_root: str, data_root: str | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    from .train import train_run

    cfg = RunConfig.from_dict(cfg_dict)
    r = train_run(cfg, RunStore(store_root), data_root=data_root, device="cpu", progress=False)
    return {"test_acc": r["test_acc"], "sparsity": r["sparsity"]}


def default_workers() -> int:
    """CUDA: 1 (runs in this process). CPU: one worker per core, at most 4."""
    if torch.cuda.is_available():
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def run_all(configs: list[RunConfig], store, data_root: str | None = None,
            workers: int | None = None, progress: bool = True) -> list[dict]:
    """Train every config not yet finished in ``store``; one progress bar over the runs.

    One-shot runs are started only after every dense run of the list has finished.
    """
    from tqdm import tqdm

    from .train import train_run

    workers = workers or default_workers()
    todo = [c for c in configs if not store.is_done(c)]
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="runs", file=sys.stdout,
               mininterval=30, disable=not progress)
    results: list[dict] = []

    def done(c: RunConfig, r: dict) -> None:
        results.append({"hash": c.run_hash(), "test_acc": r["test_acc"], "sparsity": r["sparsity"]})
        bar.set_postfix(last=f"{c.method}/{c.schedule}", acc=f"{r['test_acc']:.3f}", refresh=False)
        bar.update(1)

    waves = [[c for c in todo if c.pruning != "oneshot"], [c for c in todo if c.pruning == "oneshot"]]
    try:
        for wave in waves:
            if not wave:
                continue
            n = min(workers, len(wave))
            if n == 1:
                for c in wave:
                    done(c, train_run(c, store, data_root=data_root, progress=False))
                continue
            ctx = torch.multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(n, mp_context=ctx) as pool:
                futs = {pool.submit(_worker, c.to_dict(), str(store.root), data_root, 1): c
                        for c in wave}
                for f in as_completed(futs):
                    done(futs[f], f.result())
    finally:
        bar.close()
    return results


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
    if verbose:
        print(f"preset {name!r} ({why}); {p.label()}")
        print(f"runs: {ws.store.root}  figures: {ws.figures}  tables: {ws.results}")
    return ws
