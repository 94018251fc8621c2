"""``make gpu-check``: everything that needs a CUDA GPU, in one script within a stated budget.

Run from the repository root with the machine's own PyTorch (nothing is installed)::

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out <folder>      # or: make gpu-check

Parts, most important first, each timed, its error caught and recorded, the JSON rewritten after
every one (``"state": "running"`` and ``"complete": false`` until the end, so a partial file is
marked as such):

1. ``cuda_tests``: the 9 CUDA tests of tests/test_gpu.py (pytest, or a built-in runner when the
   interpreter has no pytest). They count only if all 9 ran and passed: skipped is not passed.
2. Timings of WRN-16-2 on the full training set (CIFAR-10 when found under ``--data``, else
   synthetic uint8 images of its shape; the JSON says which), the ``paper`` preset's phase
   settings and precision, trained as ``pcl.train`` trains (CUDA determinism on): one CE, SupCon
   encoder and linear-head epoch; a pruned run's per-step mask re-application and one epoch
   checkpoint; the k-NN of 50,000 x 10,000 at k = 30 against scikit-learn on all CPU cores
   (target >= 20x); prediction depth for one model; the evaluation forward's fastest batch size;
   the aggregate images/s of 1, 2, 4 and 8 runs training at once, each its own process. Every
   timed part is bracketed by ``torch.cuda.synchronize``; warm-ups are not timed.
3. The projected GPU-hours of the ``paper`` preset (:func:`project`: every run and phase of
   ``pcl.study.plan``), from measured values only: what was not measured is listed, not guessed.

The check stops itself within ``--budget`` seconds (default 480): a part that no longer fits is
skipped, and a watchdog ends a part that overruns, writing the JSON first. Output:
``results/gpu/<device>.json`` (or ``--out``) and, for a complete CUDA result there, the README's
GPU table. Exit 0 only when every part succeeded and the CUDA tests passed. Without CUDA it says
so and exits 1; ``--dry-run`` runs every timing on the CPU at tiny sizes (the tests do), writing
only where ``--out`` says: a dry run is never a GPU result. ``PCL_GPU_CHECK_FAIL=<part>`` makes
that part raise (to test the error path).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

START = time.perf_counter()  # the budget counts from here, imports included
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # pcl from this checkout: no install or PYTHONPATH needed
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read at cuBLAS's first use
RESULTS = ROOT / "results" / "gpu"
README = ROOT / "README.md"
GPU_TESTS = "tests/test_gpu.py"
BEGIN, END = "<!-- gpu-table:begin -->", "<!-- gpu-table:end -->"
BUDGET_S = 480  # the whole check, the CUDA tests included
CUDA_TESTS = 9  # the cuda tests in GPU_TESTS (a test keeps the two equal)
CONCURRENCY = (1, 2, 4, 8)
KNN_TARGET = 20.0
KINDS = ("ce", "supcon", "head")  # what one training image costs: CE step, contrastive step, head
FAIL_ENV = "PCL_GPU_CHECK_FAIL"
#: per-run costs beyond the training images: hours part -> (count, measured seconds per count)
EXTRAS = {"masks": ("masked_steps", "mask_step_s"), "checkpoints": ("epochs", "checkpoint_s"),
          "prediction_depth": ("pd_models", "pd_model_s")}


# ------------------------------------------------------------------------------------------------
# pure parts (no GPU; tested on CPU in tests/test_gpu_check.py)
# ------------------------------------------------------------------------------------------------
def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the JSON's file name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"device name {name!r} has no letters or digits to name a file by")
    return slug


def phase_kind(method: str, phase: str, head_only: bool = False) -> str:
    """Which measured rate a phase's images cost: 'ce' (a CE step through the whole network:
    CE training and end-to-end fine-tuning), 'supcon' (a contrastive step, two views per image:
    SupCon and SimCLR encoder training) or 'head' (a linear head on the frozen encoder)."""
    from pcl.methods import get

    if phase == "head" or (phase == "finetune" and head_only):
        return "head"
    if phase == "finetune":
        return "ce"
    if phase == "train":
        return "ce" if get(method).like == "ce" else "supcon"
    raise ValueError(f"unknown phase {phase!r} of method {method!r}; known: train, head, finetune")


def masked_steps(cfg, spec, steps: int) -> int:
    """Optimiser steps of one phase after which pruning masks are re-applied: none unpruned; from
    the start of the GMP window (the phase's own, else the schedule's) where the phase prunes;
    every step for a schedule without a window (one-shot fine-tuning holds its masks throughout)."""
    from pcl.schedules import get

    if cfg.pruning == "none":
        return 0
    window = spec.gmp_window(cfg) if spec.gmp_window else get(cfg.pruning).window(cfg)
    if window is None:
        return steps
    return 0 if spec.prune is None else steps - round(window[0] * steps)


def run_work(cfg, n_train: int) -> dict[str, dict[str, int]]:
    """One run's work per :func:`phase_kind`: training images (full batches only, as
    ``pcl.train.fit``), steps with masks re-applied (:func:`masked_steps`) and epochs (each ends
    with a checkpoint)."""
    from pcl.methods import get as get_method
    from pcl.schedules import get as get_schedule
    from pcl.train import steps_per_epoch

    out: dict[str, dict[str, int]] = {}
    for spec in get_schedule(cfg.pruning).phases(get_method(cfg.method), cfg):
        o = spec.optim(cfg)
        steps = steps_per_epoch(n_train, o.batch_size) * o.epochs
        w = out.setdefault(phase_kind(cfg.method, spec.name, cfg.finetune_head_only),
                           {"images": 0, "masked_steps": 0, "epochs": 0})
        w["images"] += steps * min(o.batch_size, n_train)
        w["masked_steps"] += masked_steps(cfg, spec, steps)
        w["epochs"] += o.epochs
    return out


def workload(configs: Iterable, n_train: int) -> dict[str, dict[str, int]]:
    """A whole study's :func:`run_work`, summed per kind."""
    total: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for cfg in configs:
        for kind, work in run_work(cfg, n_train).items():
            for k, n in work.items():
                total[kind][k] += n
    return {k: dict(v) for k, v in total.items()}


def gpu_hours(images: dict[str, int], rates: dict[str, float], counts: dict[str, int],
              costs: dict[str, float | None]) -> dict[str, Any]:
    """Hours per part from measured values only: training per kind (images / img/s) and the
    :data:`EXTRAS` (count x seconds each). A part with work but no measurement is listed in
    ``unmeasured``; ``total`` is None then (``measured_total`` sums what was measured)."""
    hours: dict[str, float] = {}
    missing = []
    for kind, n in images.items():
        if n and rates.get(kind):
            hours[kind] = n / rates[kind] / 3600
        elif n:
            missing.append(kind)
    for part, (count, cost) in EXTRAS.items():
        if counts.get(count) and costs.get(cost) is not None:
            hours[part] = counts[count] * costs[cost] / 3600
        elif counts.get(count):
            missing.append(part)
    measured = sum(hours.values())
    return hours | {"measured_total": measured, "total": None if missing else measured,
                    "unmeasured": missing}


def n_train_images(preset) -> int:
    """Training-set size of a preset's runs (CIFAR-10: 50,000, or ``train_per_class`` x 10)."""
    c = preset.ce
    if c.dataset == "synthetic":
        return c.synthetic_size
    return 50_000 if c.train_per_class is None else c.train_per_class * c.num_classes


def speedups(rows: dict[str, dict]) -> dict[str, float]:
    """Aggregate img/s of n concurrent runs over one run's, per n (empty without the 1-run row)."""
    one = rows.get("1", {}).get("img_s")
    return {n: row["img_s"] / one for n, row in rows.items()} if one else {}


def project(preset, timings: dict) -> dict:
    """Projected GPU-hours of ``preset`` from measured ``timings``: one run at a time, and with
    the measured number of concurrent runs per GPU that gave the best aggregate images/s (CE-like
    phases from the CE measurement, the rest from SupCon's; the extras are not sped up)."""
    from pcl.evaluate import depth_populations
    from pcl.study import plan

    configs = plan(preset)
    work = workload(configs, n_train_images(preset))
    images = {k: w["images"] for k, w in work.items()}
    counts = {"masked_steps": sum(w["masked_steps"] for w in work.values()),
              "epochs": sum(w["epochs"] for w in work.values()),
              "pd_models": sum(len(v) for v in depth_populations(preset, None).values())}
    rates = {k: timings["epoch"][k]["img_s"] for k in KINDS if k in timings.get("epoch", {})}
    costs = {"mask_step_s": timings.get("masks", {}).get("seconds_per_step"),
             "checkpoint_s": timings.get("checkpoint", {}).get("seconds"),
             "pd_model_s": timings.get("pd", {}).get("seconds")}
    out = {"preset": preset.name, "runs": len(configs),
           "noise_floor_runs": sum(1 for c in configs if c.pruning == "none" and c.seed >= preset.seeds),
           "train_images": images, "counts": counts, "rates_img_s": rates, "costs_s": costs,
           "one_run_at_a_time": gpu_hours(images, rates, counts, costs)}
    best: dict[str, tuple[int, float]] = {}
    for kind in KINDS:
        s = speedups(timings.get("concurrency", {}).get("ce" if kind == "ce" else "supcon", {}))
        if s:
            n, x = max(s.items(), key=lambda kv: kv[1])
            best[kind] = (int(n), x)
    if best:
        faster = {k: r * best[k][1] if k in best else r for k, r in rates.items()}
        out["best_concurrency"] = {"runs_per_gpu": {k: v[0] for k, v in best.items()},
                                   "speedup": {k: v[1] for k, v in best.items()},
                                   "hours": gpu_hours(images, faster, counts, costs)}
    return out


def _total(h: dict) -> str:
    if h["total"] is not None:
        return f"{h['total']:,.0f} GPU-hours"
    return f">= {h['measured_total']:,.0f} GPU-hours (not measured: {', '.join(h['unmeasured'])})"


def format_projection(p: dict) -> str:
    """The projection as the few lines the script prints."""
    img = ", ".join(f"{k} {v / 1e9:.2f}e9" for k, v in p["train_images"].items())
    lines = [f"{p['preset']} preset: {p['runs']} runs ({p['runs'] - p['noise_floor_runs']} + "
             f"{p['noise_floor_runs']} noise floor); training images by kind: {img}; "
             f"{p['counts']['masked_steps']:,} steps with masks, {p['counts']['epochs']:,} "
             f"checkpoints; prediction depth on {p['counts']['pd_models']} models"]
    h = p["one_run_at_a_time"]
    parts = ", ".join(f"{k} {v:,.0f} h" for k, v in h.items()
                      if k not in ("total", "measured_total", "unmeasured"))
    lines.append(f"  one run at a time: {parts}; total {_total(h)}")
    if "best_concurrency" in p:
        b = p["best_concurrency"]
        runs = ", ".join(f"{k} {n} runs ({b['speedup'][k]:.2f}x)" for k, n in b["runs_per_gpu"].items())
        lines.append(f"  best concurrency per GPU ({runs}): total {_total(b['hours'])}")
    return "\n".join(lines)


def write_result(result: dict, out_dir: Path, allow_cpu: bool = False) -> Path:
    """Write ``result`` to ``out_dir/<device slug>.json`` atomically; a dry run (not CUDA) is
    refused unless ``allow_cpu`` (results/gpu holds real GPU measurements only)."""
    if result.get("device_type") != "cuda" and not allow_cpu:
        raise ValueError(f"refusing to write a {result.get('device_type')!r} result as a GPU result; "
                         "only `make gpu-check` on a CUDA device writes results/gpu")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{device_slug(result['device'])}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_results(results_dir: Path) -> list[dict]:
    """Every GPU result in ``results_dir`` (CUDA runs only), by device name."""
    out = []
    for f in sorted(Path(results_dir).glob("*.json")):
        r = json.loads(f.read_text())
        if r.get("device_type") == "cuda" and not r.get("dry_run"):
            out.append(r)
    return sorted(out, key=lambda r: r["device"])


UNTESTED = ("No `make gpu-check` result is committed yet, so **the CUDA path is untested**: no line "
            "of GPU training, bf16 autocast on CUDA, evaluation or k-NN on CUDA has run. On a CUDA "
            "machine, `make gpu-check` runs every GPU test and timing in at most 8 minutes and "
            "writes `results/gpu/<device>.json`, from which this table is generated.")


def _num(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _row(r: dict) -> str:
    t, p = r.get("timings", {}), r.get("projection", {})
    ep, ct = t.get("epoch", {}), r.get("cuda_tests")
    tests = f"{ct['passed']} of {ct['expected']} passed" if ct else "not run"
    conc = []
    for kind in ("ce", "supcon"):
        s = speedups(t.get("concurrency", {}).get(kind, {}))
        if s:
            n, x = max(s.items(), key=lambda kv: kv[1])
            conc.append(f"{kind} {n} ({x:.2f}x)")
    knn = t.get("knn", {})
    knn_s = f"{knn['pcl_seconds']:.2f} s, {knn['speedup']:.0f}x sklearn" if knn else "n/a"
    pd_s = f"{t['pd']['seconds']:.0f} s" if "pd" in t else "n/a"
    one, best = p.get("one_run_at_a_time"), p.get("best_concurrency", {}).get("hours")
    hours = "n/a" if one is None else _total(one).replace(" GPU-hours", "") + (
        f" ({_total(best).replace(' GPU-hours', '')} concurrent)" if best else "")
    partial = "" if r.get("complete") else " (partial)"
    return (f"| {r['device']}{partial} | {r.get('date', '?')[:10]} | {r.get('data', '?')} | {tests} | "
            f"{_num(ep.get('ce', {}).get('img_s'), ',.0f')} | "
            f"{_num(ep.get('supcon', {}).get('img_s'), ',.0f')} | "
            f"{_num(ep.get('head', {}).get('img_s'), ',.0f')} | "
            f"{', '.join(conc) or 'n/a'} | {knn_s} | {pd_s} | {hours} |")


def render_table(results: list[dict]) -> str:
    """The README's GPU section body: a Markdown table, one row per device, or the sentence that
    the CUDA path is untested when there is no result."""
    if not results:
        return UNTESTED
    head = ("| device | date | data | cuda tests | CE img/s | SupCon img/s | head img/s | best runs/GPU "
            "(aggregate) | k-NN 50k x 10k | prediction depth / model | paper preset GPU-hours |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    note = ("Generated by `python benchmarks/gpu_check.py --render-readme` from `results/gpu/*.json` "
            "(written by `make gpu-check`); img/s of one run, images not views; GPU-hours: the "
            "`paper` preset, one run at a time (and at the best measured runs per GPU), with "
            "masks and checkpoints.")
    return "\n".join([head, *map(_row, results), "", note])


def update_readme(readme: Path = README, results_dir: Path = RESULTS) -> bool:
    """Replace the README text between the gpu-table markers with :func:`render_table`; returns
    whether the file changed. Raises when the markers are missing."""
    text = Path(readme).read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme} must contain {BEGIN} ... {END} once, in that order")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + render_table(load_results(results_dir)) + "\n" + text[end:]
    if new != text:
        Path(readme).write_text(new)
    return new != text


# ------------------------------------------------------------------------------------------------
# the CUDA tests: run, and passed, or they do not count
# ------------------------------------------------------------------------------------------------
def junit_counts(xml: str) -> dict[str, int]:
    """tests, failures, errors, skipped and passed from pytest's JUnit XML report."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return c | {"passed": c["tests"] - c["failures"] - c["errors"] - c["skipped"]}


def cuda_tests_verdict(c: dict[str, int]) -> str | None:
    """None when all :data:`CUDA_TESTS` ran and passed, else what fell short (a skipped test
    is not a passed one)."""
    if c["passed"] == c["tests"] == CUDA_TESTS:
        return None
    return (f"{c['passed']} of {CUDA_TESTS} CUDA tests passed ({c['tests']} collected: "
            f"{c['failures']} failed, {c['errors']} errors, {c['skipped']} skipped)")


CHILDREN: set[subprocess.Popen] = set()  # killed when the budget runs out


def _scrub(text: str) -> str:
    """No paths of this machine in a committed JSON."""
    for path, name in ((str(ROOT), "<repo>"), (sys.prefix, "<env>"), (str(Path.home()), "~")):
        text = text.replace(path, name)
    return text


def _run_child(cmd: list[str], timeout: float) -> str:
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    CHILDREN.add(p)
    try:
        return p.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        p.kill()
        return f"{p.communicate()[0]}\ntimed out after {timeout:.0f} s"
    finally:
        CHILDREN.discard(p)


def run_cuda_tests(timeout: float) -> dict:
    """The CUDA tests in a subprocess (pytest when installed, else :func:`run_tests_without_pytest`):
    counts, ``ok`` (all ran and passed), the verdict and the output's tail."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        runner = "pytest" if importlib.util.find_spec("pytest") else "built-in (no pytest here)"
        cmd = ([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                f"--junitxml={report}", GPU_TESTS] if runner == "pytest" else
               [sys.executable, __file__, "--tests-without-pytest", GPU_TESTS, "--out", str(report)])
        text = _run_child(cmd, timeout)
        if not report.exists():
            c = dict.fromkeys(("tests", "failures", "errors", "skipped", "passed"), 0)
        elif runner == "pytest":
            c = junit_counts(report.read_text())
        else:
            c = json.loads(report.read_text())
    verdict = cuda_tests_verdict(c)
    return c | {"expected": CUDA_TESTS, "ok": verdict is None, "runner": runner,
                "verdict": verdict or f"{CUDA_TESTS} of {CUDA_TESTS} passed",
                "seconds": time.perf_counter() - t0, "tail": _scrub(text)[-3000:]}


class _MonkeyPatch:
    def __init__(self) -> None:
        self.undo_list: list[tuple[Any, str, Any]] = []

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        self.undo_list.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def undo(self) -> None:
        for obj, name, value in reversed(self.undo_list):
            setattr(obj, name, value)


def _pytest_stand_in():
    """A module with the few pytest features tests/test_gpu.py uses: marks, parametrize, approx."""
    import math
    import types

    class Mark:
        def __getattr__(self, name: str):
            def mark(*args, **kw):
                if name != "parametrize":
                    return lambda fn: fn
                return lambda fn: setattr(fn, "params", (args[0], list(args[1]))) or fn
            return mark

    class Approx:
        def __init__(self, expected: float, rel: float = 1e-6, abs: float = 1e-12) -> None:
            self.expected, self.rel, self.abs = expected, rel, abs

        def __eq__(self, other: object) -> bool:
            return math.isclose(other, self.expected, rel_tol=self.rel, abs_tol=self.abs)

    return types.SimpleNamespace(mark=Mark(), approx=Approx, __name__="pytest")


def run_tests_without_pytest(path: str, out: Path) -> int:
    """Run every ``test_*`` function of ``path`` (parametrized cases expanded; ``tmp_path`` and
    ``monkeypatch`` fixtures) under :func:`_pytest_stand_in`, for a GPU image without pytest;
    writes the counts to ``out`` and returns how many failed."""
    import inspect

    sys.modules["pytest"] = _pytest_stand_in()
    sys.path.insert(0, str(ROOT / Path(path).parent))
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    passed, failed = 0, []
    for name, fn in vars(mod).items():
        if not (name.startswith("test_") and callable(fn)):
            continue
        arg, values = getattr(fn, "params", (None, [None]))
        for v in values:
            mp = _MonkeyPatch()
            with tempfile.TemporaryDirectory() as tmp:
                given = {"tmp_path": Path(tmp), "monkeypatch": mp, arg: v}
                try:
                    fn(**{k: given[k] for k in inspect.signature(fn).parameters})
                    passed += 1
                except Exception:
                    failed.append(f"{name}[{v}]: {traceback.format_exc(limit=-3)}")
                finally:
                    mp.undo()
    print("\n".join(failed) + f"\n{passed} passed, {len(failed)} failed")
    Path(out).write_text(json.dumps({"tests": passed + len(failed), "failures": len(failed),
                                     "errors": 0, "skipped": 0, "passed": passed}))
    return len(failed)


# ------------------------------------------------------------------------------------------------
# measurements (CUDA; a dry run exercises them on the CPU at tiny sizes)
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sizes:
    """How much each timing does; ``full`` on a GPU, ``tiny`` for the CPU dry run. ``est``: the
    seconds a part needs at least (it is skipped when less of the budget is left); ``reserve``:
    seconds kept back for the projection and the last write."""

    n_train: int = 50_000
    n_test: int = 10_000
    depth: int = 16
    width: int = 2
    conc_steps: dict = dataclasses.field(default_factory=lambda: {"ce": 80, "supcon": 12})
    concurrency: tuple = CONCURRENCY
    concurrency_kinds: tuple = ("ce", "supcon")
    knn_train: int = 50_000
    knn_test: int = 10_000
    pd_train: int = 50_000
    pd_test: int = 10_000
    eval_batches: tuple = (250, 500, 1000, 2000, 4000)
    reps: int = 50
    est: dict = dataclasses.field(default_factory=lambda: {
        "cuda_tests": 150, "data": 5, "epoch": 40, "masks": 5, "checkpoint": 5, "knn": 40,
        "pd": 40, "eval_batch": 30, "concurrency": 45})
    reserve: float = 15.0

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(n_train=128, n_test=64, depth=10, width=1, conc_steps={"ce": 2, "supcon": 1},
                   concurrency=(1, 2), concurrency_kinds=("ce",), knn_train=500, knn_test=100,
                   pd_train=128, pd_test=64, eval_batches=(16, 64), reps=3,
                   est=dict.fromkeys(cls().est, 1.0), reserve=5.0)


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device) -> tuple[Any, float]:
    """(result, seconds) of ``fn``, with the device synchronised on both sides."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def load_data(root: str | None, n_train: int, n_test: int, device) -> tuple[Any, str]:
    """(dataset on ``device``, description): CIFAR-10 from ``root`` when found, else synthetic
    uint8 images of its shape (timing does not depend on the pixels)."""
    import torch

    from pcl.data import DataError, Dataset, Split, load_cifar10

    try:
        ds = load_cifar10(root, download=False)
        what = "CIFAR-10"
    except (DataError, OSError):
        g = torch.Generator().manual_seed(0)
        ds = Dataset(*(Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                             torch.randint(0, 10, (n,), generator=g)) for n in (n_train, n_test)),
                     "synthetic")
        what = "synthetic uint8 (CIFAR-10 not found)"
    cut = lambda s, n: Split(s.images[:n], s.labels[:n]).to(device)  # noqa: E731
    return Dataset(cut(ds.train, n_train), cut(ds.test, n_test), ds.name), what


def phase_config(method: str, precision: str, depth: int = 16, width: int = 2):
    """The ``paper`` preset's dense run of ``method`` with one epoch per phase."""
    from pcl.presets import get_preset

    cfg = get_preset("paper", precision=precision).run(method, 0)
    return dataclasses.replace(cfg, epochs=1, head_epochs=1, depth=depth, width=width)


def prepare_phase(kind: str, split, device, precision: str, arch: tuple[int, int],
                  warmup_steps: int = 3):
    """(run, images, batch): ``run()`` trains one epoch over ``split`` of the phase ``kind`` costs
    ('ce': CE training, 'supcon': SupCon encoder training, 'head': the linear head), built as
    ``pcl.train`` builds it, after an untimed warm-up on ``warmup_steps`` batches."""
    import torch

    from pcl.data import Split
    from pcl.methods import get as get_method
    from pcl.train import build_phase, fit, steps_per_epoch

    method = "ce" if kind == "ce" else "supcon"
    cfg = phase_config(method, precision, *arch)
    m = get_method(method)
    torch.manual_seed(0)
    model = m.build(cfg).to(device).to(memory_format=torch.channels_last)
    net = m.network(model)
    spec = next(s for s in m.phases(cfg) if s.name == ("head" if kind == "head" else "train"))
    batch = spec.optim(cfg).batch_size
    if warmup_steps:
        warm = Split(split.images[:batch * warmup_steps], split.labels[:batch * warmup_steps])
        fit(build_phase(cfg, spec, model, net, warm, device), warm, 0, 0, device)
    phase = build_phase(cfg, spec, model, net, split, device)
    images = steps_per_epoch(len(split), batch) * min(batch, len(split))
    return (lambda: fit(phase, split, 0, 0, device)), images, batch


def time_phase(kind: str, split, device, precision: str, arch: tuple[int, int]) -> dict:
    """One timed epoch of :func:`prepare_phase`, under training's CUDA determinism settings."""
    import torch

    from pcl.determinism import CudaDeterminism

    with CudaDeterminism(torch.device(device), cudnn_benchmark=False):
        run, images, batch = prepare_phase(kind, split, device, precision, arch)
        _, secs = timed(run, device)
    return {"seconds": secs, "images": images, "img_s": images / secs, "batch": batch,
            "precision": precision}


def worker(spec: dict) -> None:
    """One concurrent run (a subprocess of :func:`time_concurrent`): warm up, say ready, wait for
    the common start, train its steps, write when it started and finished."""
    import torch

    from pcl.determinism import CudaDeterminism

    device = torch.device(spec["device"])
    data, _ = load_data(spec["data"], spec["n_images"], 8, device)
    with CudaDeterminism(device, cudnn_benchmark=False):
        run, images, _ = prepare_phase(spec["kind"], data.train, device, spec["precision"],
                                       tuple(spec["arch"]), warmup_steps=2)
        sync(device)
        Path(spec["ready"]).write_text("1")
        go = Path(spec["go"])
        while not go.exists():
            time.sleep(0.002)
        t0 = time.time()
        run()
        sync(device)
    Path(spec["out"]).write_text(json.dumps({"t0": t0, "t1": time.time(), "images": images}))


def time_concurrent(kind: str, n_runs: int, steps: int, device: str, precision: str,
                    data_root: str | None, arch: tuple[int, int], timeout: float) -> dict:
    """Aggregate images/s of ``n_runs`` worker processes training ``kind`` at once, each for
    ``steps`` steps, from the common start to the last finish."""
    from pcl.methods import get as get_method

    cfg = phase_config("ce" if kind == "ce" else "supcon", precision, *arch)
    spec = next(s for s in get_method(cfg.method).phases(cfg) if s.name == "train")
    n_images = spec.optim(cfg).batch_size * steps
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        specs = [{"kind": kind, "device": device, "precision": precision, "data": data_root,
                  "n_images": n_images, "arch": list(arch), "ready": str(Path(tmp) / f"ready{i}"),
                  "go": str(go), "out": str(Path(tmp) / f"out{i}.json")} for i in range(n_runs)]
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(s)]) for s in specs]
        CHILDREN.update(procs)
        try:
            deadline = time.time() + timeout
            while not all(Path(s["ready"]).exists() for s in specs):
                if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
                    raise RuntimeError(f"{kind} x{n_runs}: a worker failed or did not get ready "
                                       f"within {timeout:.0f} s")
                time.sleep(0.05)
            go.write_text("1")
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.time()))
            rows = [json.loads(Path(s["out"]).read_text()) for s in specs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            CHILDREN.difference_update(procs)
    images = sum(r["images"] for r in rows)
    wall = max(r["t1"] for r in rows) - min(r["t0"] for r in rows)
    return {"runs": n_runs, "steps": steps, "images": images, "seconds": wall, "img_s": images / wall}


def time_masks(device, arch: tuple[int, int], reps: int) -> dict:
    """Seconds per step of a pruned run's mask re-application (``Pruner.after_step`` between
    pruning events) on the whole WRN: the largest set of masks a phase holds, so an upper bound
    for the linear head's phases."""
    from pcl.models import wide_resnet
    from pcl.pruning import Pruner, magnitude_masks

    net = wide_resnet(*arch, 10).to(device)
    pruner = Pruner(net, masks=magnitude_masks(net, 0.9, "global"))
    pruner.after_step(1)  # warm-up
    _, secs = timed(lambda: [pruner.after_step(i) for i in range(reps)], device)
    return {"seconds_per_step": secs / reps, "tensors": len(pruner.masks),
            "weights": sum(m.numel() for m in pruner.masks.values())}


def time_checkpoint(device, precision: str, arch: tuple[int, int], reps: int) -> dict:
    """Seconds of one epoch checkpoint as training saves it (``RunStore.save_checkpoint``: the
    SupCon model, the larger, with its SGD momentum) into a temporary store on local disk."""
    import torch

    from pcl.methods import get as get_method
    from pcl.store import RunStore

    cfg = phase_config("supcon", precision, *arch)
    model = get_method("supcon").build(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # momentum buffers, as after any step
    state = {"phase": "train", "epoch": 1, "model": model.state_dict(), "opt": opt.state_dict(),
             "history": [], "pruner": None, "events": {}, "threads": 1}
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        store.begin(cfg)
        store.save_checkpoint(cfg, state)  # warm-up
        _, secs = timed(lambda: [store.save_checkpoint(cfg, state) for _ in range(reps)], device)
        size = (store.path(cfg) / "checkpoint.pt").stat().st_size
    return {"seconds": secs / reps, "bytes": size}


def time_pd(data, device, arch: tuple[int, int]) -> dict:
    """Prediction depth for one WRN (random weights; the cost does not depend on them)."""
    import torch

    from pcl import knn
    from pcl.evaluate import tap_features
    from pcl.models import wide_resnet

    torch.manual_seed(0)
    net = wide_resnet(*arch, 10).to(device).to(memory_format=torch.channels_last)
    tap_features(net, data.test.images[:64], device)  # warm-up

    def run():
        tr = tap_features(net, data.train.images, device)
        te = tap_features(net, data.test.images, device)
        return knn.knn_predict_many(tr, data.train.labels, te, k=30, num_classes=10,
                                        device=device)

    preds, secs = timed(run, device)
    return {"seconds": secs, "taps": int(preds.shape[0]), "n_train": len(data.train),
            "n_test": len(data.test)}


def time_eval_batches(images, device, batches: tuple, arch: tuple[int, int]) -> dict:
    """Images/s of the probe-tap and the plain evaluation forward (``tap_features``, ``predict``)
    of one WRN over ``images`` at each batch size: the device's best evaluation batch."""
    import torch

    from pcl.evaluate import tap_features
    from pcl.models import wide_resnet
    from pcl.train import predict

    torch.manual_seed(0)
    net = wide_resnet(*arch, 10).to(device).to(memory_format=torch.channels_last)
    fns = {"taps": lambda bs: tap_features(net, images, device, batch_size=bs),
           "plain": lambda bs: predict(net, images, device, batch_size=bs)}
    rows: dict[str, dict[str, float]] = {k: {} for k in fns}
    for bs in batches:
        for name, fn in fns.items():
            if bs == batches[0]:
                fn(bs)  # warm-up, once per forward
            _, secs = timed(lambda fn=fn, bs=bs: fn(bs), device)
            rows[name][str(bs)] = len(images) / secs
    return {"n_images": len(images), "img_s": rows,
            "best_batch": {k: int(max(v, key=v.get)) for k, v in rows.items()}}


def time_knn(n_train: int, n_test: int, device) -> dict:
    """pcl's k-NN on ``device`` vs scikit-learn's brute force on every CPU core (k = 30)."""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from pcl import knn

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((10, 128)).astype(np.float32) * 0.3
    y = rng.integers(0, 10, size=n_train + n_test)
    x = centers[y] + rng.standard_normal((n_train + n_test, 128)).astype(np.float32)
    xtr, ytr, xte = x[:n_train], y[:n_train], x[n_train:]
    knn.knn_predict(xtr[:200], ytr[:200], xte[:8], k=30, num_classes=10, device=device)
    pred, t_pcl = timed(lambda: knn.knn_predict(xtr, ytr, xte, k=30, num_classes=10,
                                                    device=device), device)
    t0 = time.perf_counter()
    ref = KNeighborsClassifier(30, algorithm="brute", n_jobs=-1).fit(xtr, ytr).predict(xte)
    t_sk = time.perf_counter() - t0
    return {"n_train": n_train, "n_test": n_test, "k": 30, "pcl_seconds": t_pcl,
            "sklearn_seconds": t_sk, "sklearn_cores": os.cpu_count(), "speedup": t_sk / t_pcl,
            "target": KNN_TARGET, "met": t_sk / t_pcl >= KNN_TARGET,
            "agreement": float((pred == ref).mean())}


# ------------------------------------------------------------------------------------------------
# the check: parts in order, the JSON after each, a watchdog for the budget
# ------------------------------------------------------------------------------------------------
def pcl_origin(device) -> dict:
    """Where ``pcl`` was imported from (this checkout, or the check is void) and the facts that
    decide bit-for-bit equality of CUDA runs: GPU model, driver, CUDA, cuDNN, torch."""
    import torch

    import pcl
    from pcl import provenance
    from pcl.determinism import CudaDeterminism

    ok = Path(pcl.__file__).resolve().parent == ROOT / "pcl"
    return {"ok": ok, "verdict": None if ok else "pcl was imported from outside this checkout",
            "from_checkout": ok, "version": pcl.__version__,
            "machine": provenance.machine(device),
            "determinism": CudaDeterminism(torch.device(device), cudnn_benchmark=False).record()}


class _Data:
    """The timing data set, loaded on first use (a failed load fails only the parts needing it)."""

    def __init__(self, root: str | None, sizes: Sizes, device) -> None:
        self.args, self.value = (root, sizes.n_train, sizes.n_test, device), None

    def __call__(self):
        if self.value is None:
            self.value = load_data(*self.args)
        return self.value

    def free(self) -> None:
        self.value = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def plan_parts(device: str, sizes: Sizes, data_root: str | None, precision: str,
               left: Callable[[], float]) -> list[tuple[str, float, Callable[[], Any], tuple]]:
    """(name, seconds it needs at least, function, where its value goes in the JSON), in order."""
    import torch

    name, device = device, torch.device(device)  # the workers are given its name
    data, arch, est = _Data(data_root, sizes, device), (sizes.depth, sizes.width), sizes.est

    def conc(kind: str, n: int) -> dict:
        data.free()  # the GPU memory is the workers' now
        return time_concurrent(kind, n, sizes.conc_steps[kind], name, precision, data_root,
                               arch, timeout=min(240.0, max(5.0, left())))

    def pd() -> dict:
        return time_pd(load_data(data_root, sizes.pd_train, sizes.pd_test, device)[0], device, arch)

    return [
        ("pcl", 1.0, lambda: pcl_origin(device), ("pcl",)),
        ("cuda_tests", est["cuda_tests"], lambda: run_cuda_tests(min(150.0, left())), ("cuda_tests",)),
        ("data", est["data"], lambda: data()[1], ("data",)),
        *[(f"epoch_{k}", est["epoch"], lambda k=k: time_phase(k, data()[0].train, device, precision,
                                                                arch), ("timings", "epoch", k))
          for k in KINDS],
        ("masks", est["masks"], lambda: time_masks(device, arch, sizes.reps), ("timings", "masks")),
        ("checkpoint", est["checkpoint"], lambda: time_checkpoint(device, precision, arch, sizes.reps),
         ("timings", "checkpoint")),
        ("knn", est["knn"], lambda: time_knn(sizes.knn_train, sizes.knn_test, device),
         ("timings", "knn")),
        ("pd", est["pd"], pd, ("timings", "pd")),
        ("eval_batch", est["eval_batch"],
         lambda: time_eval_batches(data()[0].test.images, device, sizes.eval_batches, arch),
         ("timings", "eval_batch")),
        *[(f"concurrency_{k}_x{n}", est["concurrency"], lambda k=k, n=n: conc(k, n),
           ("timings", "concurrency", k, str(n)))
          for k in sizes.concurrency_kinds for n in sizes.concurrency]]


def _injected(name: str):
    raise RuntimeError(f"injected failure of part {name!r} (${FAIL_ENV})")


def _put(d: dict, key: tuple, value: Any) -> None:
    for k in key[:-1]:
        d = d.setdefault(k, {})
    d[key[-1]] = value


class Check:
    """Runs the parts within the budget, rewriting the JSON after each. A watchdog thread ends
    the process ``reserve`` seconds before the budget, after writing the JSON (state 'stopped')."""

    def __init__(self, result: dict, out_dir: Path, budget: float, reserve: float,
                 finish: Callable[[dict], None], allow_cpu: bool) -> None:
        self.result, self.out_dir, self.allow_cpu, self.on_finish = result, out_dir, allow_cpu, finish
        self.budget, self.reserve, self.start = budget, reserve, START
        self.lock, self.current = threading.RLock(), None
        result.update(state="running", complete=False, budget_s=budget)
        self.timer = threading.Timer(max(0.0, self.left()), self._expire)
        self.timer.daemon = True

    def left(self) -> float:
        return self.budget - self.reserve - (time.perf_counter() - self.start)

    def write(self) -> Path:
        with self.lock:
            self.result["seconds"] = time.perf_counter() - self.start
            return write_result(self.result, self.out_dir, self.allow_cpu)

    def mark(self, name: str, **status: Any) -> None:
        with self.lock:
            self.result["parts"][name] = status
            self.write()

    def run(self, name: str, est: float, fn: Callable[[], Any], key: tuple) -> dict:
        """Run one part (or skip it when it no longer fits) and record how it went."""
        if name == os.environ.get(FAIL_ENV):
            fn = lambda: _injected(name)  # noqa: E731
        if self.left() < est:
            self.mark(name, status="skipped",
                      why=f"needs about {est:.0f} s; {max(0.0, self.left()):.0f} s of the budget left")
            return self.result["parts"][name]
        self.current, t0 = name, time.perf_counter()
        try:
            value, error = fn(), None
        except Exception as e:  # recorded, and the check goes on
            value, error = None, _scrub(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}")
        with self.lock:
            if value is not None:
                _put(self.result, key, value)
            if error is None and isinstance(value, dict) and value.get("ok") is False:
                error = value.get("verdict")
            self.current = None
            self.mark(name, status="failed" if error else "ok", seconds=time.perf_counter() - t0,
                      **({"error": error} if error else {}))
        return self.result["parts"][name]

    def finish(self, state: str) -> Path:
        """The projection (of whatever was measured), the final state, the last write."""
        with self.lock:
            statuses = {p["status"] for p in self.result["parts"].values()}
            self.result["state"] = state
            self.result["complete"] = state == "finished" and statuses <= {"ok", "not run"}
            self.on_finish(self.result)
            return self.write()

    def _expire(self) -> None:
        with self.lock:
            if self.result["state"] != "running":  # finished while the timer fired
                return
            name = self.current
            if name:
                self.result["parts"][name] = {"status": "stopped", "why": "the budget ran out"}
            self.finish(f"stopped: the {self.budget:.0f} s budget ran out"
                        + (f" during {name}" if name else ""))
        for p in list(CHILDREN):
            p.kill()
        print(f"gpu-check: budget of {self.budget:.0f} s spent; stopped (JSON written)", flush=True)
        os._exit(1)


def environment(device: str) -> dict:
    import torch

    try:
        import torchvision

        tv = torchvision.__version__
    except Exception as e:  # recorded: the pcl part will fail with the real error
        tv = f"not importable: {type(e).__name__}"
    cuda = torch.device(device).type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
            "device_type": torch.device(device).type, "torch": torch.__version__,
            "torchvision": tv, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "git_revision": _git_revision()}


def _git_revision() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                           timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _project_into(result: dict) -> None:
    """The projection from what was measured; its own error is recorded, never raised."""
    try:
        from pcl.presets import get_preset

        result["projection"] = project(get_preset("paper", precision="bf16"), result["timings"])
        print(format_projection(result["projection"]))
    except Exception as e:
        result["projection"] = {"error": _scrub(f"{type(e).__name__}: {e}")}


def _brief(part: dict, value: Any) -> str:
    extra = part.get("error") or part.get("why") or ""
    if isinstance(value, dict) and isinstance(value.get("img_s"), float):
        extra = f"{value['img_s']:,.0f} img/s " + extra
    return f"{part['status']} ({part.get('seconds', 0):.1f} s) {extra}".strip().splitlines()[0]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("PCL_DATA", "data"),
                   help="CIFAR-10 root (default $PCL_DATA or data/); synthetic images when absent")
    p.add_argument("--out", default=None, help=f"folder of the JSON (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--budget", type=float, default=BUDGET_S,
                   help=f"seconds for the whole check, CUDA tests included (default {BUDGET_S})")
    p.add_argument("--no-cuda-tests", action="store_true",
                   help="skip the CUDA tests (the check then does not pass)")
    p.add_argument("--dry-run", action="store_true",
                   help="the timings on the CPU at tiny sizes: checks the script, measures nothing")
    p.add_argument("--render-readme", action="store_true",
                   help="only regenerate the README's GPU table from results/gpu/*.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--tests-without-pytest", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.tests_without_pytest:
        return min(1, run_tests_without_pytest(args.tests_without_pytest, Path(args.out)))
    if args.render_readme:
        print("README GPU table " + ("updated" if update_readme() else "unchanged"))
        return 0
    import torch

    if args.dry_run:
        device, sizes, precision = "cpu", Sizes.tiny(), "fp32"
        if args.out is None:
            raise SystemExit("--dry-run writes nowhere unless --out names a folder (never results/gpu)")
    elif not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False). Nothing was "
              "measured; the README keeps saying the CUDA path is untested.")
        return 1
    else:
        device, sizes, precision = "cuda", Sizes(), "bf16"
    out_dir = Path(args.out) if args.out else RESULTS
    result = environment(device) | {"dry_run": args.dry_run, "sizes": dataclasses.asdict(sizes),
                                    "timings": {"epoch": {}, "concurrency": {}}}
    print(f"gpu-check on {result['device']} ({device}), torch {result['torch']}, torchvision "
          f"{result['torchvision']}, CUDA {result['cuda']}; budget {args.budget:.0f} s", flush=True)
    check = Check(result, out_dir, args.budget, sizes.reserve, _project_into, allow_cpu=args.dry_run)
    parts = plan_parts(device, sizes, args.data, precision, check.left)
    result["parts"] = {name: {"status": "pending"} for name, *_ in parts}
    check.timer.start()
    try:
        for name, est, fn, key in parts:
            if name == "cuda_tests" and (args.dry_run or args.no_cuda_tests):
                check.mark(name, status="not run",
                           why="dry run" if args.dry_run else "--no-cuda-tests given")
            else:
                print(f"== {name}: " + _brief(check.run(name, est, fn, key), _get(result, key)),
                      flush=True)
        path = check.finish("finished")
    except KeyboardInterrupt:
        check.finish("interrupted")
        return 130
    finally:
        check.timer.cancel()
    print(f"wrote {path}" + ("" if result["complete"] else " (partial: see its 'parts')"))
    if result["complete"] and not args.dry_run and out_dir.resolve() == RESULTS.resolve():
        print("README GPU table " + ("updated" if update_readme() else "unchanged"))
    tests_ok = args.dry_run or result.get("cuda_tests", {}).get("ok", False)
    if not tests_ok:
        print("gpu-check: FAILED: the CUDA tests did not all run and pass")
    return 0 if result["complete"] and tests_ok else 1


def _get(d: dict, key: tuple) -> Any:
    for k in key:
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d


if __name__ == "__main__":
    sys.exit(main())
