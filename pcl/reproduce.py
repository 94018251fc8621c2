"""``make reproduce``: run every numbered notebook in order under papermill.

Executed copies go to ``notebooks/executed/<profile>/`` (kept in git); figures to
``figures/<profile>/``, tables to ``results/<profile>/``. A failing notebook stops the chain with
its name and the failing cell's error; its partially executed copy is kept for inspection.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import papermill as pm
from papermill.exceptions import PapermillExecutionError

from .executor_options import cluster_options
from .presets import PRESETS
from .study import resolve_preset_name

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks, in the order they run."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def declared_parameters(path: Path) -> set[str]:
    """Names assigned in a notebook's ``parameters`` cell."""
    cells = nbformat.read(path, as_version=4).cells
    return {n for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])
            for n in re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", c.source, flags=re.M)}


def run_chain(profile: str = "auto", dataset: str | None = None, data_root: str | None = None,
              runs: str = "runs", out: str | Path | None = None, figures: str = "figures",
              results: str = "results", only: list[str] | None = None,
              folder: Path = NOTEBOOK_DIR, kernel: str = "python3",
              executor: dict | None = None) -> list[Path]:
    """Execute the notebooks with papermill; returns the executed copies' paths. ``executor``:
    further notebook parameters (``executor``, ``slurm_*``, ``stale_after``), passed to the notebooks
    that declare them (the training notebooks 01-03). Raises ``RuntimeError`` naming the notebook
    and the failing cell's error."""
    name, _ = resolve_preset_name(profile)
    if name not in PRESETS:
        raise ValueError(f"unknown profile {name!r}; allowed: auto, {', '.join(PRESETS)}")
    tag = name if dataset != "synthetic" else f"{name}-synthetic"
    out = Path(out) if out is not None else folder / "executed" / tag
    out.mkdir(parents=True, exist_ok=True)
    params = {"preset": name, "dataset": dataset, "data_root": data_root, "runs": str(runs),
              "figures": str(figures), "results": str(results)}
    done = []
    for nb in notebooks(folder):
        if only and not any(nb.name.startswith(o) for o in only):
            continue
        target = out / nb.name
        declared = declared_parameters(nb) if executor else set()
        nb_params = params | {k: v for k, v in (executor or {}).items() if k in declared}
        t0 = time.time()
        print(f"[reproduce] {nb.name} ...", flush=True)
        try:
            # relative paths: papermill records them in the executed copy's metadata
            pm.execute_notebook(os.path.relpath(nb), os.path.relpath(target), parameters=nb_params,
                                kernel_name=kernel, cwd=".", progress_bar=False, log_output=False)
        except PapermillExecutionError as e:
            raise RuntimeError(f"notebook {nb.name} failed in cell {e.exec_count}: {e.ename}: "
                               f"{e.evalue}\n(partially executed copy kept at {target})") from None
        print(f"[reproduce] {nb.name} done in {time.time() - t0:.0f} s -> {target}", flush=True)
        done.append(target)
    return done


def executor_parameters(a: argparse.Namespace) -> dict:
    """The training notebooks' executor parameters from the command line (unset ones left out,
    so the notebooks' defaults apply), checked now: a bad time limit or sbatch parameter fails
    before the first notebook runs."""
    names = ("executor", "slurm_partition", "slurm_gpus", "slurm_time", "slurm_array_parallelism",
             "slurm_log_dir", "slurm_extra", "stale_after")  # cluster_options' parameters, in order
    cluster_options(*(getattr(a, k) for k in names))
    return {k: getattr(a, k) for k in names if getattr(a, k) not in (None, "")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="auto")
    ap.add_argument("--dataset", default=None, choices=[None, "synthetic"])
    ap.add_argument("--data", default=None, help="CIFAR-10 root (default $PCL_DATA or ./data)")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 01,04")
    ap.add_argument("--executor", default="local", choices=["local", "submitit-local", "slurm"],
                    help="where the training notebooks' runs train (default: local processes)")
    ap.add_argument("--slurm-partition", default=None)
    ap.add_argument("--slurm-gpus", default=None, type=int, help="GPUs per job (default 1)")
    ap.add_argument("--slurm-time", default=None, help="time limit per job: minutes or HH:MM:SS")
    ap.add_argument("--slurm-array-parallelism", default=None, type=int)
    ap.add_argument("--slurm-log-dir", default=None, help="job logs (default <runs>/.submitit)")
    ap.add_argument("--slurm-extra", default=None, help="more sbatch parameters: 'account=abc,mem=32G'")
    ap.add_argument("--stale-after", default=None, type=float,
                    help="seconds before an unrefreshed run lease may be taken over")
    a = ap.parse_args(argv)
    name, why = resolve_preset_name(a.profile)
    print(f"[reproduce] profile {name!r}: {why}", flush=True)
    if name not in PRESETS:
        print(f"[reproduce] unknown profile {name!r}; allowed: auto, {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    try:
        executor = executor_parameters(a)
    except ValueError as e:
        print(f"[reproduce] {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        run_chain(name, a.dataset, a.data, a.runs, a.out, only=a.only.split(",") if a.only else None,
                  executor=executor)
    except RuntimeError as e:
        print(f"[reproduce] FAILED: {e}", file=sys.stderr)
        return 1
    print(f"[reproduce] all notebooks done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
