"""benchmarks/gpu_check.py without a GPU: the projection arithmetic (hand-worked), the JSON, the
README table, the CUDA tests' verdict, CUDA determinism settings, the Makefile target, and the
whole script as a CPU dry run from a copy of the checkout (no install, the optional packages
submitit, umap-learn and papermill made unimportable), with a failing part and with a budget too
small for every part."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcl.config import RunConfig
from pcl.determinism import CudaDeterminism
from pcl.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gc  # dataclasses look their module up there
_spec.loader.exec_module(gc)


def test_device_slug():
    assert gc.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gc.device_slug("  Tesla  V100-SXM2 (16GB) ") == "tesla-v100-sxm2-16gb"
    with pytest.raises(ValueError, match="device name"):
        gc.device_slug("!!")


def _w(images: int, masked: int, epochs: int) -> dict:
    return {"images": images, "masked_steps": masked, "epochs": epochs}


def test_run_work_hand_worked():
    # CE: 1000 // 100 = 10 full batches of 100 per epoch, 3 epochs; dense: no masks
    assert gc.run_work(RunConfig(method="ce", epochs=3, batch_size=100), 1000) == {"ce": _w(3000, 0, 3)}
    # SupCon: 1000 // 300 = 3 batches of 300 (the last 100 dropped) x 2 epochs; head 3 x 256
    sc = RunConfig(method="supcon", epochs=2, batch_size=300, head_epochs=1, head_batch_size=256)
    assert gc.run_work(sc, 1000) == {"supcon": _w(1800, 0, 2), "head": _w(768, 0, 1)}
    # gmp_late (window from 0.10): 200 CE steps -> masks after the last 180; the SupCon head's
    # own window starts at 0.025 of its 8 steps (round(0.2) = 0) -> all 8
    late = RunConfig(method="ce", epochs=20, batch_size=100, pruning="gmp_late", sparsity=0.9)
    assert gc.run_work(late, 1000) == {"ce": _w(20_000, 180, 20)}
    sc_late = dataclasses.replace(sc, epochs=20, batch_size=100, head_epochs=2, head_batch_size=250,
                                  pruning="gmp_late", sparsity=0.9)
    assert gc.run_work(sc_late, 1000) == {"supcon": _w(20_000, 180, 20), "head": _w(2000, 8, 2)}
    # one-shot fine-tuning only (7 batches of 128, 2 epochs), masks held on every step
    shot = RunConfig(method="supcon", pruning="oneshot", sparsity=0.5, finetune_epochs=2,
                     finetune_batch_size=128)
    assert gc.run_work(shot, 1000) == {"ce": _w(1792, 14, 2)}
    assert gc.run_work(dataclasses.replace(shot, finetune_head_only=True), 1000) == {"head": _w(1792, 14, 2)}
    assert gc.phase_kind("simclr", "train") == "supcon"
    with pytest.raises(ValueError, match="unknown phase"):
        gc.phase_kind("ce", "warmup")


def test_gpu_hours_hand_worked_and_only_from_measurements():
    counts = {"masked_steps": 7200, "epochs": 360, "pd_models": 4}
    costs = {"mask_step_s": 0.5, "checkpoint_s": 20.0, "pd_model_s": 900.0}
    h = gc.gpu_hours({"ce": 360_000, "supcon": 180_000}, {"ce": 100.0, "supcon": 25.0}, counts, costs)
    assert h.pop("unmeasured") == [] and h == pytest.approx({
        "ce": 1.0, "supcon": 2.0, "masks": 1.0, "checkpoints": 2.0, "prediction_depth": 1.0,
        "measured_total": 7.0, "total": 7.0})
    # the case: no head rate (and no checkpoint cost) -> listed, never guessed or raised
    h = gc.gpu_hours({"ce": 360_000, "head": 10}, {"ce": 100.0}, counts, costs | {"checkpoint_s": None})
    assert h["unmeasured"] == ["head", "checkpoints"] and h["total"] is None
    assert h["measured_total"] == pytest.approx(1.0 + 1.0 + 1.0)
    assert "not measured: head, checkpoints" in gc._total(h)


TIMINGS = {"epoch": {"ce": {"img_s": 1000.0}, "supcon": {"img_s": 500.0}, "head": {"img_s": 4000.0}},
           "pd": {"seconds": 60.0}, "masks": {"seconds_per_step": 0.001}, "checkpoint": {"seconds": 0.1},
           "concurrency": {"ce": {"1": {"img_s": 1000.0}, "2": {"img_s": 1800.0}},
                           "supcon": {"1": {"img_s": 500.0}, "4": {"img_s": 600.0}}}}


def test_paper_projection_counts_by_hand():
    """The paper preset: 30 seeds x (dense, gmp_early, gmp_late, one-shot) x 5 sparsities and an
    onset sweep of 5 begins (0, 0.1, 0.2, 0.4, 0.6), + 30 noise-floor seeds, per method; 50,000
    training images."""
    p = gc.project(get_preset("paper", precision="fp32"), TIMINGS)
    assert p["runs"] == 1320 and p["noise_floor_runs"] == 60
    trained = 30 + 30 + 3 * 150  # runs that train from scratch, per method (dense, floor, GMP, onset)
    ce_epoch, supcon_epoch, head_epoch = 390 * 128, 48 * 1024, 195 * 256
    expect = {"ce": trained * 205 * ce_epoch + 2 * 150 * 30 * ce_epoch,  # + one-shot fine-tuning
              "supcon": trained * 500 * supcon_epoch, "head": trained * 100 * head_epoch}
    assert p["train_images"] == expect
    ce, sc, head = 390 * 205, 48 * 500, 195 * 100  # steps of a CE run, SupCon encoder, head
    masked = (150 * (ce - 999) + 150 * (ce - 7995) + 30 * (5 * ce - 7995 - 15990 - 31980 - 47970)
              + 150 * (sc - 300) + 150 * (sc - 2400) + 30 * (5 * sc - 2400 - 4800 - 9600 - 14400)
              + 450 * (head - 488)  # the head's own window (0.025, 0.5) in every GMP run
              + 2 * 150 * 390 * 30)  # one-shot fine-tuning holds its masks throughout
    assert p["counts"] == {"masked_steps": masked, "epochs": trained * (205 + 600) + 2 * 150 * 30,
                           "pd_models": 2 * (1 + 3 + 5) * 5}  # dense + 3 schedules + 5 onsets, 5 each
    one = p["one_run_at_a_time"]
    assert one["ce"] == pytest.approx(expect["ce"] / 1000 / 3600)
    assert one["masks"] == pytest.approx(masked * 0.001 / 3600)
    assert one["checkpoints"] == pytest.approx(p["counts"]["epochs"] * 0.1 / 3600)
    assert one["prediction_depth"] == pytest.approx(90 * 60 / 3600)
    assert one["total"] == pytest.approx(sum(v for k, v in one.items() if k in (
        "ce", "supcon", "head", "masks", "checkpoints", "prediction_depth")))
    best = p["best_concurrency"]
    assert best["runs_per_gpu"] == {"ce": 2, "supcon": 4, "head": 4}
    assert best["hours"]["supcon"] == pytest.approx(expect["supcon"] / 600 / 3600)
    assert best["hours"]["masks"] == one["masks"]  # the extras are not sped up
    assert "1320 runs (1260 + 60 noise floor)" in gc.format_projection(p)


def test_projection_follows_the_preset():
    paper = get_preset("paper", precision="fp32")
    small = dataclasses.replace(paper, seeds=2, noise_floor=False)
    p, q = gc.project(paper, TIMINGS), gc.project(small, TIMINGS)
    assert q["runs"] == 1260 // 15 and q["noise_floor_runs"] == 0
    assert q["train_images"]["supcon"] * 510 == p["train_images"]["supcon"] * (2 + 2 * 5 * 2 + 2 * 5)


def _result(device: str, device_type: str = "cuda", **kw) -> dict:
    return {"device": device, "device_type": device_type, "date": "2026-01-02T03:04:05",
            "data": "CIFAR-10", "complete": True, "cuda_tests": {"passed": 9, "expected": 9},
            "timings": TIMINGS | {"knn": {"pcl_seconds": 0.25, "speedup": 40.0}},
            "projection": gc.project(get_preset("paper", precision="fp32"), TIMINGS), **kw}


def test_write_result_round_trip_and_refuses_cpu(tmp_path):
    path = gc.write_result(_result("NVIDIA Test GPU"), tmp_path)
    assert path == tmp_path / "nvidia-test-gpu.json"
    assert json.loads(path.read_text())["timings"]["pd"]["seconds"] == 60.0
    with pytest.raises(ValueError, match="refusing"):
        gc.write_result(_result("x86", "cpu"), tmp_path / "gpu")
    assert not (tmp_path / "gpu").exists()
    assert gc.write_result(_result("x86", "cpu", dry_run=True), tmp_path, allow_cpu=True).exists()
    assert [r["device"] for r in gc.load_results(tmp_path)] == ["NVIDIA Test GPU"]  # no dry runs


def test_render_table_and_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{gc.BEGIN}\nold text\n{gc.END}\nafter\n")
    results = tmp_path / "gpu"
    results.mkdir()
    assert gc.update_readme(readme, results)
    text = readme.read_text()
    assert "the CUDA path is untested" in text and "old text" not in text
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{gc.END}\nafter\n")
    assert not gc.update_readme(readme, results)  # idempotent
    gc.write_result(_result("NVIDIA Test GPU"), results)
    partial = _result("NVIDIA Other", complete=False, cuda_tests=None)
    del partial["timings"]["epoch"]["head"]
    partial["projection"] = gc.project(get_preset("paper", precision="fp32"), partial["timings"])
    gc.write_result(partial, results)
    assert gc.update_readme(readme, results)
    rows = {line.split(" | ")[0]: line for line in readme.read_text().splitlines() if "NVIDIA" in line}
    row = rows["| NVIDIA Test GPU"]
    assert "| 2026-01-02 | CIFAR-10 | 9 of 9 passed | 1,000 | 500 | 4,000 |" in row
    assert "ce 2 (1.80x), supcon 4 (1.20x)" in row and "0.25 s, 40x sklearn" in row
    assert "not run | 1,000 | 500 | n/a |" in rows["| NVIDIA Other (partial)"]
    assert "(not measured: head)" in rows["| NVIDIA Other (partial)"]
    assert "untested" not in readme.read_text()
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="gpu-table"):
        gc.update_readme(readme, results)


def test_committed_readme_table_is_generated_from_committed_results():
    text = (ROOT / "README.md").read_text()
    body = text[text.index(gc.BEGIN) + len(gc.BEGIN):text.index(gc.END)]
    assert body.strip() == gc.render_table(gc.load_results(gc.RESULTS)).strip()


# --- the CUDA tests count only when all ran and passed ------------------------------------------
def test_junit_counts_and_verdict_hand_worked():
    xml = ('<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="9">'
           '</testsuite></testsuites>')
    c = gc.junit_counts(xml)
    assert c == {"tests": 9, "failures": 2, "errors": 1, "skipped": 3, "passed": 3}
    assert gc.cuda_tests_verdict(c).startswith("3 of 9 CUDA tests passed")
    assert gc.cuda_tests_verdict(c | {"failures": 0, "errors": 0, "skipped": 0, "passed": 9}) is None
    assert gc.cuda_tests_verdict(dict.fromkeys(c, 0)) is not None  # nothing ran: not a pass


def test_cuda_tests_all_skipped_is_not_a_pass():
    """Here (no GPU) every CUDA test skips: pytest exits 0, the check must still say no; and the
    number collected is CUDA_TESTS."""
    r = gc.run_cuda_tests(timeout=600)
    assert r["runner"] == "pytest" and r["tests"] == gc.CUDA_TESTS == 9
    assert r["skipped"] == 9 and r["passed"] == 0 and r["ok"] is False
    assert "0 of 9 CUDA tests passed" in r["verdict"] and str(ROOT) not in r["tail"]


def test_runner_without_pytest_counts_cases(tmp_path):
    """The fallback for a GPU image without pytest: parametrized cases, tmp_path, monkeypatch
    (undone after each test) and approx, on a constructed file with one failing case."""
    f = tmp_path / "test_fake.py"
    f.write_text(
        "import os\nimport pytest\n\npytestmark = [pytest.mark.cuda]\n\n"
        "@pytest.mark.parametrize('x', [1, 2])\ndef test_param(x):\n    assert x == 1\n\n"
        "def test_fixtures(tmp_path, monkeypatch):\n    (tmp_path / 'a').write_text('1')\n"
        "    monkeypatch.setattr(os, 'sep', '!')\n    assert os.sep == '!'\n\n"
        "def test_undone():\n    assert os.sep == '/' and 0.1 + 0.2 == pytest.approx(0.3)\n")
    out = tmp_path / "counts.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                        "--tests-without-pytest", str(f), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "test_param[2]" in r.stdout and "3 passed, 1 failed" in r.stdout
    assert json.loads(out.read_text()) == {"tests": 4, "failures": 1, "errors": 0, "skipped": 0,
                                           "passed": 3}


# --- CUDA determinism (the flags can be set without a GPU) -------------------------------------
def _flags() -> tuple:
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())


def test_cuda_determinism_set_recorded_and_restored(monkeypatch):
    from pcl.train import run_env

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _flags()
    with CudaDeterminism(torch.device("cuda"), cudnn_benchmark=False) as d:
        assert _flags() == (False, True, True, True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert d.record() == {"cudnn_benchmark": False, "cudnn_deterministic": True,
                              "deterministic_algorithms": "warn", "cublas_workspace_config": ":4096:8"}
    assert _flags() == before
    with CudaDeterminism(torch.device("cuda"), cudnn_benchmark=True) as d:  # the user's choice
        assert _flags()[:3] == (True, False, before[2])
        assert d.record()["deterministic_algorithms"] == "off"
    with CudaDeterminism(torch.device("cpu"), cudnn_benchmark=False):  # the CPU needs none
        assert _flags()[1:3] == (False, before[2])
    assert _flags() == before
    env = run_env(RunConfig(), torch.device("cpu"), 1)
    assert env["cudnn_deterministic"] is False and env["deterministic_algorithms"] == "off"


# --- make gpu-check: a python3 with CUDA is used as it is ----------------------------------------
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
@pytest.mark.parametrize("has_cuda", [True, False])
def test_make_gpu_check_uses_a_cuda_python_as_it_is(tmp_path, has_cuda):
    fake = tmp_path / "python3"  # answers the CUDA probe, logs every call
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\nexit {0 if has_cuda else 1}\n")
    fake.chmod(0o755)
    r = subprocess.run(["make", "--no-print-directory", "gpu-check", f"PYTHON={fake}",
                        f"VENV={tmp_path / 'venv'}", "DATA=d", "GPU_CHECK_ARGS=--budget 60"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    calls = (tmp_path / "calls").read_text().splitlines()
    first = r.stdout.splitlines()[0]
    if has_cuda:
        assert r.returncode == 0 and "its own PyTorch (CUDA available): installing nothing" in first
        assert calls[1:] == ["benchmarks/gpu_check.py --data d --budget 60"]
    else:  # the .venv route: setup would create it (here the fake python cannot)
        assert r.returncode != 0 and f"using {tmp_path / 'venv'} (make setup)" in first
        assert calls[1].startswith("-m venv")


# --- the whole script, as a GPU node would start it, dry run on the CPU -------------------------
def _checkout(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of what the script needs (not installed anywhere) and an environment in which
    submitit, umap and papermill cannot be imported (a typical GPU image has none of them)."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "pcl", repo / "pcl", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "gpu_check.py", repo / "benchmarks")
    block = tmp_path / "block"
    block.mkdir()
    for name in ("submitit", "umap", "papermill"):
        (block / f"{name}.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCL_")}
    return repo, env | {"PYTHONPATH": str(block), "OMP_NUM_THREADS": "1"}


def _dry_run(repo: Path, out: Path, env: dict, cwd: Path, *args: str) -> tuple[int, dict, str]:
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "gpu_check.py"), "--dry-run",
                        "--out", str(out), "--data", str(out / "no-cifar"), *args],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    (path,) = out.glob("*.json")
    return r.returncode, json.loads(path.read_text()), r.stdout + r.stderr


STATUSES = {"ok", "failed", "skipped", "stopped", "not run", "pending"}


def test_dry_run_without_install_and_with_a_failing_part(tmp_path):
    """No PYTHONPATH to the checkout, started from another folder: pcl must come from the copy
    the script sits in (an editable install would give this repository's). The head epoch
    raises: recorded, every other part measured, the projection lists the head as unmeasured."""
    repo, env = _checkout(tmp_path)
    rc, r, log = _dry_run(repo, tmp_path / "out", env | {gc.FAIL_ENV: "epoch_head"}, tmp_path)
    assert rc == 1, log
    assert r["pcl"]["from_checkout"] and r["dry_run"] and r["device_type"] == "cpu"
    assert r["state"] == "finished" and r["complete"] is False
    parts = r["parts"]
    assert parts["epoch_head"]["status"] == "failed" and "injected" in parts["epoch_head"]["error"]
    assert parts["cuda_tests"]["status"] == "not run"
    assert {k: v["status"] for k, v in parts.items() if k not in ("epoch_head", "cuda_tests")} == {
        k: "ok" for k in parts if k not in ("epoch_head", "cuda_tests")}, log
    t = r["timings"]
    assert set(t["epoch"]) == {"ce", "supcon"} and all(v["img_s"] > 0 for v in t["epoch"].values())
    assert set(t["concurrency"]["ce"]) == {"1", "2"}
    assert t["concurrency"]["ce"]["2"]["images"] == 2 * t["concurrency"]["ce"]["1"]["images"]
    assert t["knn"]["agreement"] == 1.0 and t["pd"]["taps"] > 3
    assert t["masks"]["tensors"] == 10 and t["checkpoint"]["bytes"] > 0  # WRN-10-1: 9 convs + fc
    assert set(t["eval_batch"]["best_batch"].values()) <= {16, 64}
    p = r["projection"]
    assert p["runs"] == 1320 and p["one_run_at_a_time"]["unmeasured"] == ["head"]
    assert p["one_run_at_a_time"]["total"] is None and p["one_run_at_a_time"]["measured_total"] > 0
    assert r["sizes"]["depth"] == 10 and "GPU-hours" in log


def test_dry_run_budget_too_small_for_every_part(tmp_path):
    """The documented command (from the checkout root, PYTHONPATH=.) with a budget that cannot
    hold every part: the JSON is valid, says it is partial, and keeps what finished."""
    repo, env = _checkout(tmp_path)
    env["PYTHONPATH"] = "." + os.pathsep + env["PYTHONPATH"]
    rc, r, log = _dry_run(repo, tmp_path / "out", env, repo, "--budget", "12")
    assert rc == 1 and r["complete"] is False and r["budget_s"] == 12, log
    statuses = {k: v["status"] for k, v in r["parts"].items()}
    assert set(statuses.values()) <= STATUSES
    assert r["state"].startswith("stopped") or "skipped" in statuses.values(), statuses
    if statuses.get("epoch_ce") == "ok":
        assert r["timings"]["epoch"]["ce"]["img_s"] > 0
