"""``make check-study``: retrain a small sample of the committed study's runs and say whether this
machine reproduces the study, bit for bit or as a new draw of the same populations.

The two paths, the seed-noise rule and its validation: README, "Checking the committed study".
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import stats

from . import provenance
from .config import Preset, RunConfig
from .evaluate import population_key, populations, predictions
from .keys import PopKey
from .metrics import modal_labels
from .presets import get_preset
from .store import RunStore, _atomic_write_bytes, atomic_write_json
from .study import run_all

#: The retrained sample, (method, pruning) at seed :data:`SEED`, pruned runs at the preset's
#: headline sparsity: both methods, dense and pruned while training.
SAMPLE: tuple[tuple[str, str], ...] = (("ce", "none"), ("ce", "gmp_early"), ("supcon", "none"),
                                       ("supcon", "gmp_early"))
SEED = 0
#: The chance that a faithful reproduction on another machine fails the statistical check.
ALPHA = 0.01
MIN_SEEDS = 3
REFERENCE = "check_reference.npz"
MACHINE = "machine.json"


# --- the rule (pure) ----------------------------------------------------------------------------
def agreement(pred: np.ndarray, others: np.ndarray, num_classes: int) -> float:
    """Share of images on which ``pred`` is the modal label of ``others`` (models, images)."""
    return float((np.asarray(pred) == modal_labels(others, num_classes)).mean())


def loo_agreement(preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Per model (row of ``preds``): its agreement with the modal label of the other models."""
    preds = np.asarray(preds)
    if preds.ndim != 2 or len(preds) < 2:
        raise ValueError(f"preds must be (models >= 2, images); got shape {preds.shape}")
    return np.array([agreement(preds[i], np.delete(preds, i, 0), num_classes) for i in range(len(preds))])


def bounds(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """The (1 - alpha) prediction interval for one more draw of the distribution ``values`` were
    drawn from (normal, mean and sd estimated): mean +/- t(n-1) * sd * sqrt(1 + 1/n)."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"need at least 2 values for a prediction interval; got {v.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    half = stats.t.ppf(1 - alpha / 2, len(v) - 1) * v.std(ddof=1) * np.sqrt(1 + 1 / len(v))
    return float(v.mean() - half), float(v.mean() + half)


def loo_outside(values: np.ndarray, alpha: float) -> int:
    """How many of ``values`` lie outside the :func:`bounds` of the others: the rule applied to
    each committed seed as if it were the retrained run (expect about ``alpha * n``)."""
    v = np.asarray(values, dtype=float)
    return sum(not _within(v[i], np.delete(v, i), alpha) for i in range(len(v)))


def _within(x: float, values: np.ndarray, alpha: float) -> bool:
    lo, hi = bounds(values, alpha)
    return lo <= x <= hi


# --- what the analysis chain commits -------------------------------------------------------------
def sample_configs(preset: Preset, sample: tuple[tuple[str, str], ...] = SAMPLE,
                   seed: int = SEED) -> list[RunConfig]:
    """The configs of ``sample`` that ``preset`` has (its methods, dense or its schedules)."""
    return [preset.run(m, seed, p, 0.0 if p == "none" else preset.headline_sparsity)
            for m, p in sample if m in preset.methods and (p == "none" or p in preset.schedules)]


def _name(key: tuple) -> str:
    return f"{key[0]}|{key[1]}|{float(key[2]):g}"


def reference_populations(preset: Preset, store: RunStore,
                          sample: tuple[tuple[str, str], ...] = SAMPLE
                          ) -> dict[PopKey, list[RunConfig]]:
    """The finished committed runs each sampled run is compared with: its population's, and for a
    dense run the noise floor's too (the same config with other seeds)."""
    pops = populations(preset, store)
    out = {}
    for cfg in sample_configs(preset, sample):
        key = population_key(preset, cfg)
        cfgs = pops.get(key, []) + (pops.get(PopKey.floor(key.method), []) if key.is_dense else [])
        if cfgs:
            out[key] = cfgs
    return out


def record_study(preset: Preset, store: RunStore, results: str | Path,
                 sample: tuple[tuple[str, str], ...] = SAMPLE) -> dict[str, Any]:
    """Write ``machine.json`` (the machine(s) the study's finished runs were trained on,
    :func:`pcl.provenance.summarise`) and ``check_reference.npz`` (what :func:`check` compares
    with) into ``results``; return the machine summary."""
    results = Path(results)
    envs = [store.load_env(c) for cfgs in populations(preset, store).values() for c in cfgs]
    machine = {"preset": preset.name} | provenance.summarise(envs)
    atomic_write_json(machine, results / MACHINE)
    arrays: dict[str, np.ndarray] = {}
    for key, cfgs in reference_populations(preset, store, sample).items():
        arrays[f"{_name(key)}|seeds"] = np.array([c.seed for c in cfgs], dtype=np.int64)
        arrays[f"{_name(key)}|acc"] = np.array([store.load_history(c)["test_acc"] for c in cfgs])
        arrays[f"{_name(key)}|preds"] = predictions(store, cfgs).astype(np.uint8)
    c = preset.ce
    meta = {"preset": preset.name, "precision": preset.precision, "num_classes": c.num_classes,
            "dataset": "synthetic" if c.dataset == "synthetic" else None, "synthetic_size": c.synthetic_size}
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta)), **arrays)
    _atomic_write_bytes(buf.getvalue(), results / REFERENCE)
    return machine


@dataclass
class Committed:
    """A committed study's tables, as :func:`check` reads them from ``results/<preset>/``."""

    runs: pd.DataFrame
    reference: dict[str, np.ndarray]
    meta: dict[str, Any]
    machine: dict[str, Any] | None

    def preset(self) -> Preset:
        """The committed study's preset, at its recorded precision (bf16 stays bf16 on a CPU
        without native bf16: emulated, slower, but the same configs)."""
        m = self.meta
        return get_preset(m["preset"], dataset=m["dataset"], synthetic_size=m["synthetic_size"],
                          precision=m["precision"])


def load_committed(results: str | Path) -> Committed:
    """Read ``runs.csv``, ``check_reference.npz`` and ``machine.json`` from ``results``."""
    results = Path(results)
    missing = [n for n in ("runs.csv", REFERENCE) if not (results / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{results} lacks {', '.join(missing)}: run notebook 04 on the "
                                "finished study first (make figures)")
    runs = pd.read_csv(results / "runs.csv", dtype={"run": str, "logits_hash": str, "fingerprint": str})
    lacking = sorted({"run", "logits_hash", "fingerprint"} - set(runs.columns))
    if lacking:
        raise ValueError(f"{results / 'runs.csv'} has no column(s) {lacking}: it predates run "
                         "provenance; regenerate it with notebook 04")
    with np.load(results / REFERENCE) as z:
        ref = {k: z[k] for k in z.files}
    meta = json.loads(str(ref.pop("meta")))
    machine = json.loads((results / MACHINE).read_text()) if (results / MACHINE).is_file() else None
    return Committed(runs, ref, meta, machine)


# --- the check ----------------------------------------------------------------------------------
@dataclass
class RunCheck:
    """The verdict on one retrained run; ``stats_ok`` is None on the bit-for-bit path."""

    label: str
    path: str
    ok: bool
    detail: str
    stats_ok: bool | None = None


def _committed_row(runs: pd.DataFrame, key: PopKey, seed: int) -> pd.Series | None:
    r = runs[(runs.method == key.method) & (runs.schedule == key.schedule)
             & np.isclose(runs.sparsity.astype(float), key.sparsity) & (runs.seed == seed)]
    return r.iloc[0] if len(r) else None


def statistical(cfg: RunConfig, store: RunStore, ref: dict[str, np.ndarray], key: PopKey,
                alpha: float, num_classes: int) -> tuple[bool, str]:
    """(within seed noise?, what was measured) for a run retrained on another machine."""
    name = _name(key)
    if f"{name}|preds" not in ref:
        raise ValueError(f"check_reference.npz has no population {name}: regenerate it with "
                         "notebook 04 (the sample changed?)")
    seeds, acc_ref, preds = ref[f"{name}|seeds"], ref[f"{name}|acc"], ref[f"{name}|preds"]
    if len(seeds) < MIN_SEEDS:
        raise ValueError(f"population {name} has {len(seeds)} committed seeds; the statistical "
                         f"check needs at least {MIN_SEEDS}")
    pred = store.load_logits(cfg).argmax(1).numpy()
    # agreement leaves out the committed run of its own seed (same initialisation and data order)
    measured = {"accuracy": (store.load_history(cfg)["test_acc"], acc_ref),
                "agreement": (agreement(pred, preds[seeds != cfg.seed], num_classes),
                              loo_agreement(preds, num_classes))}
    ok, parts = True, []
    for what, (x, vals) in measured.items():
        lo, hi = bounds(vals, alpha)
        inside = lo <= x <= hi
        ok &= inside
        parts.append(f"{what} {x:.4f} {'in' if inside else 'OUTSIDE'} [{lo:.4f}, {hi:.4f}] (committed "
                     f"{np.mean(vals):.4f} +/- {np.std(vals, ddof=1):.4f} over {len(vals)} seeds; the rule "
                     f"on each of them: {loo_outside(vals, alpha)} outside)")
    return ok, "; ".join(parts)


def check_run(cfg: RunConfig, store: RunStore, committed: Committed, preset: Preset,
              alpha: float) -> RunCheck:
    """Compare one retrained run with its committed row: bit for bit on the same machine
    fingerprint, else :func:`statistical`; a config whose hash differs fails either way."""
    key = population_key(preset, cfg)
    at = f"@{key.sparsity:g}" if key.sparsity else ""
    label = f"{cfg.method} {key.schedule}{at} seed {cfg.seed} (run {cfg.run_hash()})"
    row = _committed_row(committed.runs, key, cfg.seed)
    if row is None:
        return RunCheck(label, "none", False, "no committed row in runs.csv")
    config = "" if row.run == cfg.run_hash() else f"config differs from the committed run {row.run}; "
    if provenance.fingerprint_key(store.load_env(cfg)) == row.fingerprint:
        mine = provenance.logits_hash(store.load_logits(cfg))
        same = mine == row.logits_hash
        detail = (f"test logits {mine} {'=' if same else '!='} committed {row.logits_hash}"
                  + ("" if same else " on the same machine fingerprint: an error"))
        return RunCheck(label, "bit-for-bit", same and not config, config + detail)
    ok, detail = statistical(cfg, store, committed.reference, key, alpha, committed.meta["num_classes"])
    return RunCheck(label, "statistical", ok and not config, config + detail, stats_ok=ok)


def verdict(checks: list[RunCheck]) -> tuple[bool, str]:
    """(passed, the verdict line)."""
    bad = [c.label for c in checks if not c.ok]
    n, bit = len(checks), sum(c.path == "bit-for-bit" for c in checks)
    if bad:
        return False, f"VERDICT: FAIL: {len(bad)} of {n} runs do not reproduce: {'; '.join(bad)}"
    if bit == n:
        return True, (f"VERDICT: PASS: all {n} runs equal the committed ones bit for bit "
                      "(same machine fingerprint)")
    return True, (f"VERDICT: PASS: {n - bit} of {n} runs (another machine) lie within seed noise "
                  f"of the committed populations at family-wise level {ALPHA:g}; {bit} bit for bit")


def check(preset: Preset, committed: Committed, data_root: str | None = None,
          workers: int | None = None, device: str | None = None, root: str | Path | None = None,
          sample: tuple[tuple[str, str], ...] = SAMPLE, progress: bool = True,
          say: Callable[[str], None] = lambda line: print(line, flush=True)) -> list[RunCheck]:
    """Retrain ``sample`` of ``preset`` into a fresh store (temporary unless ``root``) and
    check each run against ``committed`` (:func:`check_run`)."""
    configs = sample_configs(preset, sample)
    if not configs:
        raise ValueError(f"no run of the sample {sample} belongs to preset {preset.name!r}")
    opts = {"device": device} if device else {}
    with tempfile.TemporaryDirectory(prefix="check-study-") as tmp:
        store = RunStore(root or tmp)
        say(f"Retraining {len(configs)} runs of preset {preset.name!r} into {store.root}: "
            + ", ".join(f"{c.method} {c.schedule} seed {c.seed}" for c in configs))
        run_all(configs, store, data_root, workers, progress, executor_options=opts)
        envs = [store.load_env(c) for c in configs]
        say(f"Retrained here: {provenance.describe(provenance.summarise(envs))}")
        if committed.machine:
            say(f"Committed study: {provenance.describe(committed.machine)}")
        checks = [check_run(c, store, committed, preset, ALPHA / (2 * len(configs))) for c in configs]
    for c in checks:
        say(f"{'ok  ' if c.ok else 'FAIL'} {c.label}: {c.path}: {c.detail}")
    return checks


def main(argv: list[str] | None = None) -> int:
    """``python -m pcl.check_study --preset cpu``: 0 when the sample reproduces, 1 when not,
    2 when there is nothing to check against."""
    ap = argparse.ArgumentParser(prog="python -m pcl.check_study", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu", help="the committed study: results/<preset>/")
    ap.add_argument("--results", default="results", help="folder holding results/<preset>/")
    ap.add_argument("--data", default=None, help="CIFAR-10 root (default: $PCL_DATA or ./data)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (one thread each)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--keep", help="train into this run store and keep it (its finished runs are reused)")
    a = ap.parse_args(argv)
    try:
        committed = load_committed(Path(a.results) / a.preset)
    except (OSError, ValueError) as e:
        print(f"check-study: {e}", file=sys.stderr)
        return 2
    checks = check(committed.preset(), committed, a.data, a.workers, a.device, a.keep)
    ok, line = verdict(checks)
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
