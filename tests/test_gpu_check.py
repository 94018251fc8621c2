"""benchmarks/gpu_check.py without a GPU: the projection arithmetic (hand-worked), the JSON, the
README table, and the whole measuring script as a CPU dry run at tiny sizes."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pcl.config import RunConfig, get_preset

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


def test_run_images_hand_worked():
    # CE: 1000 // 100 = 10 full batches of 100 per epoch, 3 epochs
    assert gc.run_images(RunConfig(method="ce", epochs=3, batch_size=100), 1000) == {"ce": 3000}
    # SupCon: 1000 // 300 = 3 batches of 300 (the last 100 dropped) x 2 epochs; head 3 x 256
    sc = RunConfig(method="supcon", epochs=2, batch_size=300, head_epochs=1, head_batch_size=256)
    assert gc.run_images(sc, 1000) == {"supcon": 1800, "head": 768}
    # one-shot fine-tuning only (7 batches of 128, 2 epochs): end to end is CE-like, or the head
    shot = RunConfig(method="supcon", pruning="oneshot", sparsity=0.5, finetune_epochs=2,
                     finetune_batch_size=128)
    assert gc.run_images(shot, 1000) == {"ce": 1792}
    assert gc.run_images(dataclasses.replace(shot, finetune_head_only=True), 1000) == {"head": 1792}
    assert gc.phase_kind("simclr", "train") == "supcon"
    with pytest.raises(ValueError, match="unknown phase"):
        gc.phase_kind("ce", "warmup")


def test_gpu_hours_hand_worked():
    h = gc.gpu_hours({"ce": 360_000, "supcon": 180_000}, {"ce": 100.0, "supcon": 25.0},
                     pd_models=4, pd_seconds=900.0)
    assert h == pytest.approx({"ce": 1.0, "supcon": 2.0, "prediction_depth": 1.0, "total": 4.0})
    with pytest.raises(ValueError, match="no measured rate"):
        gc.gpu_hours({"head": 10}, {"ce": 1.0})


TIMINGS = {"epoch": {"ce": {"img_s": 1000.0}, "supcon": {"img_s": 500.0}, "head": {"img_s": 4000.0}},
           "pd": {"seconds": 60.0},
           "concurrency": {"ce": {"1": {"img_s": 1000.0, "speedup": 1.0},
                                  "2": {"img_s": 1800.0, "speedup": 1.8}},
                           "supcon": {"1": {"img_s": 500.0, "speedup": 1.0},
                                      "4": {"img_s": 600.0, "speedup": 1.2}}}}


def test_paper_projection_counts_by_hand():
    """The paper preset: 30 seeds x (dense, gmp_early, gmp_late, one-shot) x 5 sparsities and an
    onset sweep of 5 begins, + 30 noise-floor seeds, per method; 50,000 training images."""
    p = gc.project(get_preset("paper", precision="fp32"), TIMINGS)
    assert p["runs"] == 1320 and p["noise_floor_runs"] == 60
    trained = 30 + 30 + 3 * 150  # runs that train from scratch, per method (dense, floor, GMP, onset)
    ce_epoch, supcon_epoch, head_epoch = 390 * 128, 48 * 1024, 195 * 256
    expect = {"ce": trained * 205 * ce_epoch + 2 * 150 * 30 * ce_epoch,  # + one-shot fine-tuning
              "supcon": trained * 500 * supcon_epoch, "head": trained * 100 * head_epoch}
    assert p["train_images"] == expect
    assert p["pd_models"] == 2 * (1 + 3 + 5) * 5  # dense + 3 schedules + 5 onsets at 0.9, 5 models
    one = p["one_run_at_a_time"]
    assert one["ce"] == pytest.approx(expect["ce"] / 1000 / 3600)
    assert one["prediction_depth"] == pytest.approx(90 * 60 / 3600)
    best = p["best_concurrency"]
    assert best["runs_per_gpu"] == {"ce": 2, "supcon": 4, "head": 4}
    assert best["hours"]["supcon"] == pytest.approx(expect["supcon"] / 600 / 3600)
    assert "1320 runs (1260 + 60 noise floor)" in gc.format_projection(p)


def test_projection_follows_the_preset():
    paper = get_preset("paper", precision="fp32")
    small = dataclasses.replace(paper, seeds=2, noise_floor=False)
    p, q = gc.project(paper, TIMINGS), gc.project(small, TIMINGS)
    assert q["runs"] == 1260 // 15 and q["noise_floor_runs"] == 0
    assert q["train_images"]["supcon"] * 510 == p["train_images"]["supcon"] * (2 + 2 * 5 * 2 + 2 * 5)


def _result(device: str, device_type: str = "cuda", **kw) -> dict:
    return {"device": device, "device_type": device_type, "date": "2026-01-02T03:04:05",
            "data": "CIFAR-10", "pytest": {"passed": 9, "failed": 0},
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
    assert gc.update_readme(readme, results)
    row = next(line for line in readme.read_text().splitlines() if "NVIDIA Test GPU" in line)
    assert "| 2026-01-02 | CIFAR-10 | 9 passed, 0 failed | 1,000 | 500 | 4,000 |" in row
    assert "ce 2 (1.80x), supcon 4 (1.20x)" in row and "0.25 s, 40x sklearn" in row
    assert "untested" not in readme.read_text()
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="gpu-table"):
        gc.update_readme(readme, results)


def test_committed_readme_table_is_generated_from_committed_results():
    text = (ROOT / "README.md").read_text()
    body = text[text.index(gc.BEGIN) + len(gc.BEGIN):text.index(gc.END)]
    assert body.strip() == gc.render_table(gc.load_results(gc.RESULTS)).strip()


def test_dry_run_on_cpu_measures_every_part(tmp_path, capsys):
    assert gc.main(["--dry-run", "--out", str(tmp_path), "--data", str(tmp_path / "no-cifar")]) == 0
    (out,) = tmp_path.glob("*.json")
    r = json.loads(out.read_text())
    assert r["dry_run"] and r["device_type"] == "cpu" and r["skipped"] == []
    assert r["data"].startswith("synthetic")
    t = r["timings"]
    assert set(t["epoch"]) == {"ce", "supcon", "head"} and all(v["img_s"] > 0 for v in t["epoch"].values())
    assert set(t["concurrency"]["ce"]) == {"1", "2"} and t["concurrency"]["ce"]["1"]["speedup"] == 1.0
    assert t["concurrency"]["ce"]["2"]["images"] == 2 * t["concurrency"]["ce"]["1"]["images"]
    assert t["knn"]["agreement"] == 1.0 and t["pd"]["taps"] == 21
    assert set(t["eval_batch"]["best_batch"].values()) <= {16, 64}
    assert r["projection"]["runs"] == 1320
    assert "GPU-hours" in capsys.readouterr().out
    assert not list(gc.RESULTS.glob("*.json")) or all(
        not json.loads(f.read_text()).get("dry_run") for f in gc.RESULTS.glob("*.json"))
