"""``make gpu-check``: everything that needs a CUDA GPU, in one script of at most 8 minutes.

1. ``pytest -m cuda`` (tests/test_gpu.py): augmentation on CUDA equals the CPU result for the same
   random parameters, a bf16 training step matches fp32, two runs with one seed give identical
   weights, the k-NN on CUDA equals the CPU, evaluation outputs are fp32.
2. Timings of WRN-16-2 on the full training set (CIFAR-10 when found under ``--data``, else
   synthetic uint8 images of CIFAR-10's shape; the JSON says which), with the ``paper`` preset's
   phase settings and precision: one CE epoch, one SupCon encoder epoch and one linear-head epoch
   with one run; then the aggregate images/s of 1, 2, 4 and 8 runs training at once on the GPU,
   each its own worker process (on part of an epoch); prediction depth for one model (tap features
   of 50,000 + 10,000 images and 21 k-NN probes); the evaluation forward's fastest batch size;
   and the k-NN of 50,000 x 10,000 points at k = 30
   against scikit-learn on all CPU cores (target: >= 20x). Each timed part is bracketed by
   ``torch.cuda.synchronize``; warm-up runs are not timed.
3. ``results/gpu/<device>.json``; the README's GPU table, regenerated from every JSON there
   (:func:`render_table`); and the projected GPU-hours of the ``paper`` preset from these timings
   (:func:`project`: every run and phase of ``pcl.study.plan(get_preset('paper'))``, so the
   projection follows the preset).

Without CUDA the script says so and exits 1: nothing is measured, and the README keeps saying the
CUDA path is untested. ``--dry-run`` runs steps 2-3 on the CPU at tiny sizes (the tests do) and
writes its JSON only where ``--out`` says; a dry run is never a GPU result.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "gpu"
README = ROOT / "README.md"
BEGIN, END = "<!-- gpu-table:begin -->", "<!-- gpu-table:end -->"
BUDGET_S = 480  # the whole check, pytest included
CONCURRENCY = (1, 2, 4, 8)
KNN_TARGET = 20.0
KINDS = ("ce", "supcon", "head")  # what one training image costs: CE step, contrastive step, head


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


def run_images(cfg, n_train: int) -> dict[str, int]:
    """Training images one run processes, per :func:`phase_kind` (full batches only, as
    ``pcl.train.fit``: ``steps_per_epoch x batch x epochs`` for every phase of the run)."""
    from pcl.methods import get as get_method
    from pcl.schedules import get as get_schedule
    from pcl.train import steps_per_epoch

    out: dict[str, int] = defaultdict(int)
    for spec in get_schedule(cfg.pruning).phases(get_method(cfg.method), cfg):
        o = spec.optim(cfg)
        kind = phase_kind(cfg.method, spec.name, cfg.finetune_head_only)
        out[kind] += steps_per_epoch(n_train, o.batch_size) * min(o.batch_size, n_train) * o.epochs
    return dict(out)


def workload(configs: Iterable, n_train: int) -> dict[str, int]:
    """Training images of a whole study, per kind (sum of :func:`run_images`)."""
    total: dict[str, int] = defaultdict(int)
    for cfg in configs:
        for kind, n in run_images(cfg, n_train).items():
            total[kind] += n
    return dict(total)


def gpu_hours(images: dict[str, int], rates: dict[str, float], pd_models: int = 0,
              pd_seconds: float = 0.0) -> dict[str, float]:
    """Hours of training per kind (images / images-per-second), of prediction depth
    (``pd_models x pd_seconds``) and their total."""
    missing = sorted(k for k, n in images.items() if n and not rates.get(k))
    if missing:
        raise ValueError(f"no measured rate for {missing}; have {sorted(rates)}")
    hours = {k: n / rates[k] / 3600 for k, n in images.items() if n}
    hours["prediction_depth"] = pd_models * pd_seconds / 3600
    hours["total"] = sum(hours.values())
    return hours


def n_train_images(preset) -> int:
    """Training-set size of a preset's runs (CIFAR-10: 50,000, or ``train_per_class`` x 10)."""
    c = preset.ce
    if c.dataset == "synthetic":
        return c.synthetic_size
    return 50_000 if c.train_per_class is None else c.train_per_class * c.num_classes


def project(preset, timings: dict) -> dict:
    """Projected GPU-hours of ``preset`` from measured ``timings``: one run at a time (the rates of
    one run), and with the number of concurrent runs per GPU that gave the best aggregate
    images/s (per kind: CE-like phases from the CE measurement, the rest from SupCon's)."""
    from pcl.evaluate import depth_populations
    from pcl.study import plan

    configs = plan(preset)
    floor = sum(1 for c in configs if c.pruning == "none" and c.seed >= preset.seeds)
    images = workload(configs, n_train_images(preset))
    pd_models = sum(len(v) for v in depth_populations(preset, None).values())
    rates = {k: timings["epoch"][k]["img_s"] for k in KINDS if k in timings.get("epoch", {})}
    one = gpu_hours(images, rates, pd_models, timings.get("pd", {}).get("seconds", 0.0))
    out = {"preset": preset.name, "runs": len(configs), "noise_floor_runs": floor,
           "train_images": images, "pd_models": pd_models, "rates_img_s": rates,
           "one_run_at_a_time": one}
    conc = timings.get("concurrency", {})
    if conc:
        speedup, best_n = {}, {}
        for kind in KINDS:
            src = conc.get("ce" if kind == "ce" else "supcon", {})
            if not src:
                continue
            n, row = max(src.items(), key=lambda kv: kv[1]["speedup"])
            speedup[kind], best_n[kind] = row["speedup"], int(n)
        if speedup:
            best_rates = {k: r * speedup.get(k, 1.0) for k, r in rates.items()}
            out["best_concurrency"] = {"runs_per_gpu": best_n, "speedup": speedup,
                                       "hours": gpu_hours(images, best_rates, pd_models,
                                                          timings.get("pd", {}).get("seconds", 0.0))}
    return out


def format_projection(p: dict) -> str:
    """The projection as the few lines the script prints."""
    img = ", ".join(f"{k} {v / 1e9:.2f}e9" for k, v in p["train_images"].items())
    lines = [f"{p['preset']} preset: {p['runs']} runs ({p['runs'] - p['noise_floor_runs']} + "
             f"{p['noise_floor_runs']} noise floor); training images by kind: {img}; "
             f"prediction depth on {p['pd_models']} models"]
    h = p["one_run_at_a_time"]
    parts = ", ".join(f"{k} {v:,.0f} h" for k, v in h.items() if k != "total")
    lines.append(f"  one run at a time: {parts}; total {h['total']:,.0f} GPU-hours")
    if "best_concurrency" in p:
        b = p["best_concurrency"]
        runs = ", ".join(f"{k} {n} runs ({b['speedup'][k]:.2f}x)" for k, n in b["runs_per_gpu"].items())
        lines.append(f"  best concurrency per GPU ({runs}): total {b['hours']['total']:,.0f} GPU-hours")
    return "\n".join(lines)


def write_result(result: dict, out_dir: Path, allow_cpu: bool = False) -> Path:
    """Write ``result`` to ``out_dir/<device slug>.json``; a dry run (not CUDA) is refused unless
    ``allow_cpu`` (results/gpu holds real GPU measurements only)."""
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


def render_table(results: list[dict]) -> str:
    """The README's GPU section body: a Markdown table, one row per device, or the sentence that
    the CUDA path is untested when there is no result."""
    if not results:
        return UNTESTED
    head = ("| device | date | data | cuda tests | CE img/s | SupCon img/s | head img/s | best runs/GPU "
            "(aggregate) | k-NN 50k x 10k | prediction depth / model | paper preset GPU-hours |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        t, p = r.get("timings", {}), r.get("projection", {})
        ep = t.get("epoch", {})
        tests = r.get("pytest", {})
        tests_s = (f"{tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed"
                   if tests else "not run")
        conc = []
        for kind in ("ce", "supcon"):
            src = t.get("concurrency", {}).get(kind, {})
            if src:
                n, row = max(src.items(), key=lambda kv: kv[1]["speedup"])
                conc.append(f"{kind} {n} ({row['speedup']:.2f}x)")
        knn = t.get("knn", {})
        knn_s = (f"{knn['pcl_seconds']:.2f} s, {knn['speedup']:.0f}x sklearn" if knn else "n/a")
        pd_s = f"{t['pd']['seconds']:.0f} s" if "pd" in t else "n/a"
        hours = p.get("one_run_at_a_time", {}).get("total")
        best = p.get("best_concurrency", {}).get("hours", {}).get("total")
        hours_s = "n/a" if hours is None else f"{hours:,.0f}" + (f" ({best:,.0f} concurrent)"
                                                                 if best is not None else "")
        rows.append(f"| {r['device']} | {r.get('date', '?')[:10]} | {r.get('data', '?')} | {tests_s} | "
                    f"{_num(ep.get('ce', {}).get('img_s'), ',.0f')} | "
                    f"{_num(ep.get('supcon', {}).get('img_s'), ',.0f')} | "
                    f"{_num(ep.get('head', {}).get('img_s'), ',.0f')} | "
                    f"{', '.join(conc) or 'n/a'} | {knn_s} | {pd_s} | {hours_s} |")
    note = ("Generated by `python benchmarks/gpu_check.py --render-readme` from `results/gpu/*.json` "
            "(written by `make gpu-check`); img/s of one run, images not views; GPU-hours: the "
            "`paper` preset, one run at a time (and at the best measured runs per GPU).")
    return "\n".join([head, *rows, "", note])


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
# measurements (CUDA; a dry run exercises them on the CPU at tiny sizes)
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sizes:
    """How much each timing does; ``full`` on a GPU, ``tiny`` for the CPU dry run."""

    n_train: int = 50_000
    n_test: int = 10_000
    conc_steps: dict = dataclasses.field(default_factory=lambda: {"ce": 80, "supcon": 12})
    concurrency: tuple = CONCURRENCY
    concurrency_kinds: tuple = ("ce", "supcon")
    knn_train: int = 50_000
    knn_test: int = 10_000
    pd_train: int = 50_000
    pd_test: int = 10_000
    eval_batches: tuple = (250, 500, 1000, 2000, 4000)

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(n_train=256, n_test=64, conc_steps={"ce": 2, "supcon": 1}, concurrency=(1, 2),
                   concurrency_kinds=("ce",), knn_train=500, knn_test=100, pd_train=256, pd_test=64,
                   eval_batches=(16, 64))


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


def phase_config(method: str, precision: str):
    """The ``paper`` preset's dense run of ``method`` with one epoch per phase."""
    from pcl.config import get_preset

    cfg = get_preset("paper", precision=precision).run(method, 0)
    return dataclasses.replace(cfg, epochs=1, head_epochs=1)


def prepare_phase(kind: str, split, device, precision: str, warmup_steps: int = 3):
    """(run, images, batch): ``run()`` trains one epoch over ``split`` of the phase ``kind`` costs
    ('ce': CE training, 'supcon': SupCon encoder training, 'head': the linear head), built as
    ``pcl.train`` builds it, after an untimed warm-up on ``warmup_steps`` batches."""
    import torch

    from pcl.data import Split
    from pcl.methods import get as get_method
    from pcl.train import build_phase, fit, steps_per_epoch

    method = "ce" if kind == "ce" else "supcon"
    cfg = phase_config(method, precision)
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


def time_phase(kind: str, split, device, precision: str) -> dict:
    """One timed epoch of :func:`prepare_phase`."""
    run, images, batch = prepare_phase(kind, split, device, precision)
    _, secs = timed(run, device)
    return {"seconds": secs, "images": images, "img_s": images / secs, "batch": batch,
            "precision": precision}


def worker(spec: dict) -> None:
    """One concurrent run (a subprocess of :func:`time_concurrent`): warm up, say ready, wait for
    the common start, train its steps, write when it started and finished."""
    import torch

    device = torch.device(spec["device"])
    data, _ = load_data(spec["data"], spec["n_images"], 8, device)
    run, images, _ = prepare_phase(spec["kind"], data.train, device, spec["precision"],
                                   warmup_steps=2)
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
                    data_root: str | None, timeout: float) -> dict:
    """Aggregate images/s of ``n_runs`` worker processes training ``kind`` at once, each for
    ``steps`` steps, from the common start to the last finish."""
    from pcl.methods import get as get_method

    cfg = phase_config("ce" if kind == "ce" else "supcon", precision)
    spec = next(s for s in get_method(cfg.method).phases(cfg) if s.name == "train")
    n_images = spec.optim(cfg).batch_size * steps
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        specs = [{"kind": kind, "device": device, "precision": precision, "data": data_root,
                  "n_images": n_images, "ready": str(Path(tmp) / f"ready{i}"), "go": str(go),
                  "out": str(Path(tmp) / f"out{i}.json")} for i in range(n_runs)]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(s)], env=env)
                 for s in specs]
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
    images = sum(r["images"] for r in rows)
    wall = max(r["t1"] for r in rows) - min(r["t0"] for r in rows)
    return {"runs": n_runs, "steps": steps, "images": images, "seconds": wall,
            "img_s": images / wall}


def time_pd(data, device) -> dict:
    """Prediction depth for one WRN-16-2 (random weights; the cost does not depend on them)."""
    import torch

    from pcl import metrics
    from pcl.evaluate import tap_features
    from pcl.models import wide_resnet

    torch.manual_seed(0)
    net = wide_resnet(16, 2, 10).to(device).to(memory_format=torch.channels_last)
    tap_features(net, data.test.images[:64], device)  # warm-up

    def run():
        tr = tap_features(net, data.train.images, device)
        te = tap_features(net, data.test.images, device)
        return metrics.knn_predict_many(tr, data.train.labels, te, k=30, num_classes=10,
                                        device=device)

    preds, secs = timed(run, device)
    return {"seconds": secs, "taps": int(preds.shape[0]), "n_train": len(data.train),
            "n_test": len(data.test)}


def time_eval_batches(images, device, batches: tuple = (250, 500, 1000, 2000, 4000)) -> dict:
    """Images/s of the probe-tap and the plain evaluation forward (``tap_features``, ``predict``)
    of one WRN-16-2 over ``images`` at each batch size: the device's best evaluation batch."""
    import torch

    from pcl.evaluate import tap_features
    from pcl.models import wide_resnet
    from pcl.train import predict

    torch.manual_seed(0)
    net = wide_resnet(16, 2, 10).to(device).to(memory_format=torch.channels_last)
    fns = {"taps": lambda bs: tap_features(net, images, device, batch_size=bs),
           "plain": lambda bs: predict(net, images, device, batch_size=bs)}
    rows: dict[str, dict[str, float]] = {k: {} for k in fns}
    for bs in batches:
        for name, fn in fns.items():
            if bs == batches[0]:
                fn(bs)  # warm-up, once per forward
            _, secs = timed(lambda: fn(bs), device)
            rows[name][str(bs)] = len(images) / secs
    return {"n_images": len(images), "img_s": rows,
            "best_batch": {k: int(max(v, key=v.get)) for k, v in rows.items()}}


def time_knn(n_train: int, n_test: int, device) -> dict:
    """pcl's k-NN on ``device`` vs scikit-learn's brute force on every CPU core (k = 30)."""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from pcl import metrics

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((10, 128)).astype(np.float32) * 0.3
    y = rng.integers(0, 10, size=n_train + n_test)
    x = centers[y] + rng.standard_normal((n_train + n_test, 128)).astype(np.float32)
    xtr, ytr, xte = x[:n_train], y[:n_train], x[n_train:]
    metrics.knn_predict(xtr[:200], ytr[:200], xte[:8], k=30, num_classes=10, device=device)
    pred, t_pcl = timed(lambda: metrics.knn_predict(xtr, ytr, xte, k=30, num_classes=10,
                                                    device=device), device)
    t0 = time.perf_counter()
    ref = KNeighborsClassifier(30, algorithm="brute", n_jobs=-1).fit(xtr, ytr).predict(xte)
    t_sk = time.perf_counter() - t0
    return {"n_train": n_train, "n_test": n_test, "k": 30, "pcl_seconds": t_pcl,
            "sklearn_seconds": t_sk, "sklearn_cores": os.cpu_count(), "speedup": t_sk / t_pcl,
            "target": KNN_TARGET, "met": t_sk / t_pcl >= KNN_TARGET,
            "agreement": float((pred == ref).mean())}


def run_pytest(timeout: float) -> dict:
    """``pytest -m cuda`` in a subprocess: counts and the tail of its output."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                            "tests/test_gpu.py"], cwd=ROOT, capture_output=True, text=True,
                           timeout=timeout)
        text, code = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        text, code = f"{e.stdout or ''}\npytest timed out after {timeout:.0f} s", -1
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", text)}
    for path, name in ((str(ROOT), "<repo>"), (sys.prefix, "<env>"), (str(Path.home()), "~")):
        text = text.replace(path, name)  # the JSON is committed: no paths of this machine
    return {"returncode": code, "passed": counts.get("passed", 0), "failed": counts.get("failed", 0),
            "skipped": counts.get("skipped", 0), "errors": counts.get("error", 0),
            "seconds": time.perf_counter() - t0, "tail": text[-3000:]}


def measure(device: str, sizes: Sizes, data_root: str | None, budget: float,
            pytest_timeout: float | None, log: Callable[[str], None] = print) -> dict:
    """Every GPU test and timing, most important first, skipping what the time budget no longer
    allows (the JSON lists what was skipped)."""
    import torch

    from pcl.config import resolve_precision

    start = time.perf_counter()
    device = torch.device(device)
    left = lambda: budget - (time.perf_counter() - start)  # noqa: E731
    precision = resolve_precision("auto", device)
    result: dict[str, Any] = {"skipped": []}
    if pytest_timeout:
        log("== pytest -m cuda")
        result["pytest"] = run_pytest(min(pytest_timeout, left()))
        log(f"   {result['pytest']['passed']} passed, {result['pytest']['failed']} failed, "
            f"{result['pytest']['skipped']} skipped ({result['pytest']['seconds']:.0f} s)")
    data, what = load_data(data_root, sizes.n_train, sizes.n_test, device)
    result["data"] = what
    t: dict[str, Any] = {"epoch": {}, "concurrency": {}}
    result["timings"] = t
    log(f"== one epoch of each phase kind, one run ({what}, {precision})")
    for kind in KINDS:
        if left() < 30:
            result["skipped"].append(f"epoch {kind}")
            continue
        t["epoch"][kind] = time_phase(kind, data.train, device, precision)
        log(f"   {kind}: {t['epoch'][kind]['img_s']:,.0f} img/s ({t['epoch'][kind]['seconds']:.1f} s)")
    if left() > 40:
        log("== k-NN, k = 30")
        t["knn"] = time_knn(sizes.knn_train, sizes.knn_test, device)
        log(f"   pcl {t['knn']['pcl_seconds']:.3f} s, scikit-learn ({os.cpu_count()} cores) "
            f"{t['knn']['sklearn_seconds']:.2f} s: {t['knn']['speedup']:.1f}x")
    else:
        result["skipped"].append("knn")
    if left() > 40:
        log("== prediction depth, one model")
        pd_data, _ = load_data(data_root, sizes.pd_train, sizes.pd_test, device)
        t["pd"] = time_pd(pd_data, device)
        del pd_data
        log(f"   {t['pd']['seconds']:.1f} s")
    else:
        result["skipped"].append("pd")
    if left() > 40:
        log("== evaluation batch size")
        t["eval_batch"] = time_eval_batches(data.test.images, device, sizes.eval_batches)
        log(f"   fastest: {t['eval_batch']['best_batch']}")
    else:
        result["skipped"].append("eval_batch")
    del data
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    for kind in sizes.concurrency_kinds:
        for n in sizes.concurrency:
            if left() < 45:
                result["skipped"].append(f"concurrency {kind} x{n}")
                continue
            log(f"== {n} concurrent {kind} run(s)")
            try:
                row = time_concurrent(kind, n, sizes.conc_steps[kind], str(device), precision, data_root,
                                      timeout=min(240.0, left() - 10))
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                result["skipped"].append(f"concurrency {kind} x{n}: {e}")
                continue
            t["concurrency"].setdefault(kind, {})[str(n)] = row
            log(f"   aggregate {row['img_s']:,.0f} img/s")
        one = t["concurrency"].get(kind, {}).get("1")
        for row in t["concurrency"].get(kind, {}).values():
            row["speedup"] = row["img_s"] / one["img_s"] if one else float("nan")
        if not one:
            t["concurrency"].pop(kind, None)
    result["seconds"] = time.perf_counter() - start
    return result


def environment(device: str) -> dict:
    import torch

    cuda = torch.device(device).type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
            "device_type": torch.device(device).type, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "git_revision": _git_revision()}


def _git_revision() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                           timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("PCL_DATA", "data"),
                   help="CIFAR-10 root (default $PCL_DATA or data/); synthetic images when absent")
    p.add_argument("--out", default=None, help=f"folder of the JSON (default {RESULTS})")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    p.add_argument("--no-pytest", action="store_true", help="skip pytest -m cuda")
    p.add_argument("--dry-run", action="store_true",
                   help="the timings on the CPU at tiny sizes: checks the script, measures nothing")
    p.add_argument("--render-readme", action="store_true",
                   help="only regenerate the README's GPU table from results/gpu/*.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.render_readme:
        print("README GPU table " + ("updated" if update_readme() else "unchanged"))
        return 0
    import torch

    from pcl.config import get_preset

    if args.dry_run:
        device, sizes = "cpu", Sizes.tiny()
        if args.out is None:
            p.error("--dry-run writes nowhere unless --out names a folder (never results/gpu)")
    elif not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False). Nothing was "
              "measured; the README keeps saying the CUDA path is untested.")
        return 1
    else:
        device, sizes = "cuda", Sizes()
    out_dir = Path(args.out) if args.out else RESULTS
    env = environment(device)
    print(f"gpu-check on {env['device']} ({device}), torch {env['torch']}, CUDA {env['cuda']}; "
          f"budget {args.budget:.0f} s")
    result = env | {"dry_run": args.dry_run} | measure(
        device, sizes, args.data, args.budget, None if args.no_pytest or args.dry_run else 150.0)
    result["sizes"] = dataclasses.asdict(sizes)
    result["projection"] = project(get_preset("paper", precision="bf16"), result["timings"])
    print(format_projection(result["projection"]))
    path = write_result(result, out_dir, allow_cpu=args.dry_run)
    print(f"wrote {path}")
    if not args.dry_run and out_dir.resolve() == RESULTS.resolve():
        print("README GPU table " + ("updated" if update_readme() else "unchanged"))
    failed = result.get("pytest", {}).get("failed", 0) + result.get("pytest", {}).get("errors", 0)
    return 1 if failed or result.get("pytest", {}).get("returncode", 0) not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main())
