"""Accuracy per compute of SupCon (and CE) at the `cpu` preset's scale: the sweep that sized it.

PROTOCOL.md (Design at reduced scale, confound 1) asks every preset to match the methods' dense
test accuracies within 2 points. SupCon is the expensive method, so its recipe is chosen first, by
measurement: learning rate, temperature, batch size and how the epochs split between encoder and
linear head, one seed each, on the full CIFAR-10 training set. Then CE's training length is set to
match. Every variant is one run of `pcl.study.run_all` (one thread per worker), so each row is an
ordinary stored run whose config and wall time are recorded; the table goes to
`results/cpu/sizing_sweep.csv`.

    python benchmarks/supcon_sweep.py --data <CIFAR-10 root> --runs <store> [--workers 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from pcl.presets import get_preset
from pcl.store import RunStore
from pcl.study import run_all

#: The recipe the sweep starts from (the `cpu` preset before this sweep), spelled out so the
#: variants stay the same runs whatever the preset says today.
BASE: dict[str, dict] = {
    "supcon": {"epochs": 3, "batch_size": 128, "lr": 0.02, "temperature": 0.5, "head_epochs": 1},
    "ce": {"epochs": 2, "batch_size": 128, "lr": 0.1},
}
#: (name, method, overrides of BASE[method])
VARIANTS: list[tuple[str, str, dict]] = [
    ("supcon lr0.02 t0.5 b128 3+1", "supcon", {}),
    ("supcon lr0.05 t0.5 b128 3+1", "supcon", {"lr": 0.05}),
    ("supcon lr0.02 t0.1 b128 3+1", "supcon", {"temperature": 0.1}),
    ("supcon lr0.05 t0.1 b128 3+1", "supcon", {"lr": 0.05, "temperature": 0.1}),
    ("supcon lr0.1 t0.1 b128 3+1", "supcon", {"lr": 0.1, "temperature": 0.1}),
    ("supcon lr0.02 t0.5 b128 2+1", "supcon", {"epochs": 2}),
    ("ce lr0.1 b128 1", "ce", {"epochs": 1}),
    ("ce lr0.05 b128 1", "ce", {"epochs": 1, "lr": 0.05}),
    ("ce lr0.1 b128 2", "ce", {}),
    ("ce lr0.1 b256 1", "ce", {"epochs": 1, "batch_size": 256}),
    ("ce lr0.1 b160 1", "ce", {"epochs": 1, "batch_size": 160}),
    ("ce lr0.1 b192 1", "ce", {"epochs": 1, "batch_size": 192}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of variant names")
    ap.add_argument("--out", default="results/cpu/sizing_sweep.csv")
    a = ap.parse_args()
    preset = get_preset("cpu")
    variants = [v for v in VARIANTS if not a.only or any(s in v[0] for s in a.only.split(","))]
    configs = [preset.run(m, 0, **(BASE[m] | kw)) for _, m, kw in variants]
    store = RunStore(a.runs)
    run_all(configs, store, data_root=a.data, workers=a.workers)
    rows = []
    for (name, method, kw), cfg in zip(variants, configs, strict=True):
        d = store.path(cfg)
        hist = json.loads((d / "history.json").read_text())
        env = json.loads((d / "env.json").read_text())
        rows.append({"variant": name, "method": method, "overrides": json.dumps(kw),
                     "test_acc": hist.get("test_acc"), "train_minutes": env.get("wall_seconds", 0) / 60,
                     "run": cfg.run_hash()})
    out = pd.DataFrame(rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(a.out, index=False)
    print(out.to_string(index=False))


if __name__ == "__main__":
    main()
