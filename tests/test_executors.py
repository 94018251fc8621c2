"""pcl.executors and study.run_all: leases across processes, parent death, submitit jobs, requeue.

Tiny synthetic runs throughout (WRN-10-1 on 40-200 synthetic images); the processes started here
are real (worker processes, submitit jobs), so these tests take a few seconds each.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_lease import read_log

from pcl import study
from pcl.config import RunConfig
from pcl.executor_options import check_options, make_submitit_executor, parse_minutes, parse_sbatch_extra
from pcl.executors import RunsFailedError
from pcl.lease import LEASE_NAME, read_lease
from pcl.plan import Plan
from pcl.store import CorruptRunError, RunStore

ROOT = Path(__file__).resolve().parent.parent
TINY = RunConfig(dataset="synthetic", synthetic_size=40, depth=10, width=1, epochs=1, batch_size=16)


def _tiny(n: int, **kw) -> list[RunConfig]:
    from dataclasses import replace

    return [replace(TINY, seed=s, **kw) for s in range(n)]


def _trainings(store: RunStore, cfg: RunConfig) -> list[dict]:
    return [e for e in read_log(store.path(cfg)) if e["event"] == "train"]


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has stopped running
    except FileNotFoundError:
        return True


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parent = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


# --- option parsing and planning ----------------------------------------------------------------
def test_time_limits_and_sbatch_extras_hand_values():
    assert parse_minutes(90) == 90 and parse_minutes("90") == 90
    assert parse_minutes("1:30:00") == 90 and parse_minutes("2-00:00:00") == 2880
    assert parse_minutes("2-3") == 2 * 1440 + 180 and parse_minutes("10:30") == 10.5
    for bad in ("soon", "0", -5, "1:2:3:4"):
        with pytest.raises(ValueError, match="time limit"):
            parse_minutes(bad)
    assert parse_sbatch_extra("account=abc,qos=high --mem=32G exclusive") == {
        "account": "abc", "qos": "high", "mem": "32G", "exclusive": True}
    assert parse_sbatch_extra(None) == {} and parse_sbatch_extra({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_sbatch_extra("=x")


def test_unknown_executor_and_options_are_refused():
    with pytest.raises(ValueError, match="unknown executor 'kubernetes'"):
        check_options("kubernetes", None)
    with pytest.raises(ValueError, match="partition"):
        check_options("local", {"partition": "gpu"})  # a SLURM option given to the local executor
    with pytest.raises(ValueError, match="stale_after"):
        check_options("local", {"stale_after": -1})
    assert check_options("slurm", {"partition": "gpu", "time": "4:00:00"})["partition"] == "gpu"


def test_slurm_executor_writes_the_asked_sbatch_parameters(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    ex = make_submitit_executor("slurm", tmp_path / "%j", {
        "partition": "gpu", "gpus": 1, "time": "4:00:00", "array_parallelism": 16,
        "extra": "account=proj1,mem=32G"})
    text = ex._make_submission_file_text("python job.py", "uid")
    for flag in ("--partition=gpu", "--gpus-per-node=1", "--time=240", "--account=proj1",
                 "--mem=32G", "--signal=USR2@"):
        assert f"#SBATCH {flag}" in text, flag
    assert ex.parameters["array_parallelism"] == 16


def test_oneshot_waits_for_its_parent_and_a_missing_parent_is_named(tmp_path, smoke):
    store = RunStore(tmp_path)
    dense, one = smoke.run("ce", 0), smoke.run("ce", 0, "oneshot", 0.9)
    plan = Plan.of([one, dense], store, stale_after=60)
    assert plan.ready(set()) == [dense]  # the child is held back, whatever the list order
    plan.fail(dense.run_hash(), "boom")
    plan.sweep(set())
    assert not plan.todo and "parent run" in plan.failed[one.run_hash()]
    with pytest.raises(ValueError) as ei:
        Plan.of([one], store, stale_after=60)
    assert dense.run_hash() in str(ei.value)


def _finished_fake(store: RunStore, cfg: RunConfig) -> None:
    """A finished run without training it (its files stand for a trained one)."""
    store.finish(cfg, {"w": torch.ones(2)}, {"test_acc": 0.5, "sparsity": 0.0}, torch.zeros(2, 10),
                 torch.zeros(2, 4))


@pytest.mark.parametrize("damage", ["model.pt", "config.json"])
def test_corrupt_finished_runs_are_named_or_retrained_never_skipped(tmp_path, damage):
    """Before: run_all returned [] for a finished run whose DONE no longer verified, and a corrupt
    config.json of a finished run was a bare JSONDecodeError without a path."""
    store = RunStore(tmp_path)
    cfg, other = _tiny(2)
    for c in (cfg, other):
        _finished_fake(store, c)
    bad = store.path(cfg) / damage
    bad.write_bytes(b"{ damaged")
    with pytest.raises(CorruptRunError) as ei:
        study.run_all([cfg, other], store, workers=1, progress=False)
    msg = str(ei.value)
    assert "1 finished runs" in msg and str(bad) in msg and "retrain_corrupt" in msg
    assert str(store.path(other)) not in msg
    out = study.run_all([cfg, other], store, workers=1, progress=False,
                        executor_options={"retrain_corrupt": True})
    assert [(r["hash"], r["trained"]) for r in out] == [(cfg.run_hash(), True)]
    store.verify(cfg)
    assert len(_trainings(store, cfg)) == 1 and not _trainings(store, other)


def test_a_failing_lease_release_never_hides_the_error_that_stopped_the_run(tmp_path, monkeypatch):
    """Disk full: training fails with ENOSPC and the release in the finally fails too; the user
    sees the ENOSPC (naming the file), with the release failure as a note."""
    import errno

    import pcl.lease as L
    import pcl.train as TR

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "writing runs/ce/x/model.pt failed: No space left on device")

    def release_fails(self, expected):
        raise OSError(errno.ENOSPC, "No space left on device (release)")

    monkeypatch.setattr(TR, "train_run", full)
    monkeypatch.setattr(L.Lease, "_move_aside", release_fails)
    from pcl.executors import train_leased

    with pytest.raises(OSError, match="model.pt failed") as ei:
        train_leased(TINY, tmp_path)
    assert any("releasing the lease" in n for n in getattr(ei.value, "__notes__", []))


# --- local worker processes ---------------------------------------------------------------------
def test_local_runs_every_config_once_and_reports_failures(tmp_path):
    """Three good runs, one failing; the first good one is leased by a live worker elsewhere,
    which then stops refreshing: it is skipped, come back to, and taken over once stale."""
    store = RunStore(tmp_path / "runs")
    good = _tiny(3)
    bad = RunConfig(dataset="cifar10", depth=10, width=1, epochs=1, train_per_class=2,
                    test_per_class=2)  # an empty image-folder export: fails with a data error
    for split in ("train", "test"):
        (tmp_path / "no-data" / split).mkdir(parents=True)
    held = store.path(good[0]) / LEASE_NAME
    held.parent.mkdir(parents=True)
    planted = time.time()
    held.write_text(json.dumps({"host": "another-node", "pid": 1, "token": None, "nonce": "n0",
                                "time": planted, "beat": 0}))
    with pytest.raises(RunsFailedError) as ei:
        study.run_all(good + [bad], store, data_root=str(tmp_path / "no-data"), workers=2,
                      progress=False, executor_options={"poll": 0.2, "stale_after": 4})
    assert list(ei.value.failures) == [bad.run_hash()]
    assert "1 of 4 runs failed" in str(ei.value) and "no-data" in str(ei.value)
    for c in good:
        store.verify(c)
        assert len(_trainings(store, c)) == 1
        assert not (store.path(c) / LEASE_NAME).exists()
    first = read_log(store.path(good[0]))[0]
    assert first["event"] == "taken_over" and first["previous"]["nonce"] == "n0"
    assert first["time"] >= planted + 4  # not before the lease went stale
    assert [read_log(store.path(c))[0]["event"] for c in good[1:]] == ["acquired", "acquired"]
    # called again: nothing to train, nothing returned
    assert study.run_all(good, store, progress=False) == []


_RUN_ALL = """
    import json, sys
    from dataclasses import replace
    from pcl import study
    from pcl.config import RunConfig
    from pcl.store import RunStore
    cfgs = [replace(RunConfig.from_dict(json.loads(sys.argv[1])), seed=s) for s in range(int(sys.argv[3]))]
    r = study.run_all(cfgs, RunStore(sys.argv[2]), workers=int(sys.argv[4]), progress=False,
                      executor_options={{"poll": 0.2{extra}}})
    print("RESULT", json.dumps(r))
"""


def test_two_run_all_calls_at_once_train_every_run_exactly_once(tmp_path):
    store = RunStore(tmp_path / "runs")
    n = 6
    cmd = _script(_RUN_ALL.format(extra="")) + [json.dumps(TINY.to_dict()), str(store.root), str(n), "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].split("RESULT", 1)[1]) for o in outs]
    trained = [{r["hash"] for r in res if r["trained"]} for res in results]
    cfgs = _tiny(n)
    assert trained[0] | trained[1] == {c.run_hash() for c in cfgs}
    assert not trained[0] & trained[1]
    for c in cfgs:
        assert len(_trainings(store, c)) == 1, read_log(store.path(c))
        store.verify(c)
    # each call reports every run, including those the other call trained
    assert all(len(res) == n for res in results)


def test_killing_the_parent_leaves_no_process_behind(tmp_path):
    store = RunStore(tmp_path / "runs")
    long_run = _tiny(1, synthetic_size=200, epochs=200)[0]
    cmd = _script(_RUN_ALL.format(extra="")) + [json.dumps(long_run.to_dict()), str(store.root),
                                                 "2", "2"]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    leases = [store.path(c) / LEASE_NAME for c in _tiny(2, synthetic_size=200, epochs=200)]
    t_end = time.time() + 600  # generous: a loaded machine starts torch slowly
    holders = [None, None]
    while None in holders and time.time() < t_end:
        time.sleep(0.2)
        holders = [(read_lease(p) or {}).get("pid") for p in leases]
    assert None not in holders, "the workers did not start training"
    family = _children(parent.pid)
    assert set(holders) <= family and len(family) >= 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t_end = time.time() + 120
    while not all(_gone(pid) for pid in family) and time.time() < t_end:
        time.sleep(0.2)
    assert all(_gone(pid) for pid in family), [pid for pid in family if not _gone(pid)]
    # the workers let go of their runs on the way out: the next call can take them at once
    assert not any(p.exists() for p in leases)


# --- submitit -----------------------------------------------------------------------------------
def test_smoke_study_end_to_end_through_submitit_local(tmp_path, smoke):
    """Three smoke runs as submitit jobs (real processes); the one-shot run waits for its parent."""
    store = RunStore(tmp_path / "runs")
    dense = [smoke.run("ce", 0), smoke.run("supcon", 0)]
    child = smoke.run("ce", 0, "oneshot", 0.9)
    opts = {"poll": 0.3, "folder": str(tmp_path / "jobs")}
    res = study.run_all([child] + dense, store, workers=2, progress=False,
                        executor="submitit-local", executor_options=opts)
    assert {r["hash"] for r in res} == {c.run_hash() for c in dense + [child]}
    for c in dense + [child]:
        store.verify(c)
        ev = read_log(store.path(c))
        assert len([e for e in ev if e["event"] == "train"]) == 1
        assert ev[0]["token"].startswith("local:")  # trained inside a submitit job
    started = read_log(store.path(child))[0]["time"]
    assert started >= (store.path(child.parent()) / "DONE").stat().st_mtime
    jobs = sorted(p for p in (tmp_path / "jobs").iterdir() if p.name.isdigit())
    assert len(jobs) == 3
    # executed again: picks up what finished, submits nothing
    assert study.run_all([child] + dense, store, progress=False, executor="submitit-local",
                         executor_options=opts) == []
    assert sorted(p for p in (tmp_path / "jobs").iterdir() if p.name.isdigit()) == jobs


def test_preempted_job_is_requeued_and_resumes_bit_identical(tmp_path):
    import submitit

    from pcl.executors import TrainJob
    from pcl.train import train_run

    cfg = RunConfig(dataset="synthetic", synthetic_size=200, depth=10, width=1, epochs=8,
                    batch_size=16)
    ref = train_run(cfg, RunStore(tmp_path / "ref"), device="cpu", progress=False)
    store = RunStore(tmp_path / "runs")
    ex = submitit.LocalExecutor(folder=str(tmp_path / "jobs" / "%j"))
    ex.update_parameters(timeout_min=60)
    job = ex.submit(TrainJob(cfg.to_dict(), str(store.root)))
    ckpt, lease = store.path(cfg) / "checkpoint.pt", store.path(cfg) / LEASE_NAME
    t_end = time.time() + 600  # generous: a loaded machine starts torch slowly
    while not ckpt.exists() and time.time() < t_end:
        time.sleep(0.02)
    assert ckpt.exists(), "the job wrote no checkpoint"
    os.kill(read_lease(lease)["pid"], signal.SIGUSR2)  # what SLURM sends before pre-empting
    out = job.result()
    assert out["status"] == "done" and out["trained"]
    ev = read_log(store.path(cfg))
    trains = [e for e in ev if e["event"] == "train"]
    assert [t["resume"] for t in trains] == [False, True]
    assert trains[0]["token"] == trains[1]["token"]  # the same job, requeued
    firsts = [e["epoch"] for e in ev if e["event"] == "first_epoch"]
    assert firsts[0] == 1 and 1 < firsts[1] <= cfg.epochs  # resumed, not restarted
    state = store.load_state(cfg)
    assert state.keys() == ref["state"].keys()
    assert all(torch.equal(state[k], ref["state"][k]) for k in state)
    assert torch.equal(store.load_logits(cfg), RunStore(tmp_path / "ref").load_logits(cfg))


# --- notebooks and make reproduce ---------------------------------------------------------------
def test_training_notebooks_declare_the_executor_parameters():
    from pcl import reproduce

    names = {"executor", "slurm_partition", "slurm_gpus", "slurm_time", "slurm_array_parallelism",
             "slurm_log_dir", "slurm_extra"}
    for nb in reproduce.notebooks(ROOT / "notebooks"):
        declared = reproduce.declared_parameters(nb)
        assert {"preset", "dataset", "runs", "data_root", "figures", "results"} <= declared
        assert (names <= declared) == (nb.name[:2] in ("01", "02", "03")), nb.name


@pytest.mark.parametrize("uid, says", [("1000", "needs root"), ("0", "there is no apt-get")])
def test_make_test_cluster_refuses_loudly_where_it_cannot_run(tmp_path, uid, says):
    """Not root, or root without slurm and apt: cluster/run.sh says why and fails (never passes)."""
    import shutil

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_ / "id").chmod(0o755)
    (bin_ / "dirname").symlink_to(shutil.which("dirname"))
    r = subprocess.run(["/bin/bash", str(ROOT / "cluster" / "run.sh"), sys.executable],
                       env={"PATH": str(bin_)}, capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_make_reproduce_passes_stale_after():
    r = subprocess.run(["make", "-n", "reproduce", "PROFILE=smoke", "STALE_AFTER=120"], cwd=ROOT,
                       capture_output=True, text=True)
    assert "--stale-after 120" in r.stdout and "--stale-after" not in subprocess.run(
        ["make", "-n", "reproduce", "PROFILE=smoke"], cwd=ROOT, capture_output=True, text=True).stdout


def test_reproduce_command_line_becomes_notebook_parameters():
    import argparse

    from pcl.executor_options import cluster_options
    from pcl.reproduce import executor_parameters

    ns = argparse.Namespace(executor="slurm", slurm_partition="gpu", slurm_gpus=2, slurm_time="1:00:00",
                            slurm_array_parallelism=None, slurm_log_dir="", slurm_extra="qos=high",
                            stale_after=120.0)
    p = executor_parameters(ns)
    assert p == {"executor": "slurm", "slurm_partition": "gpu", "slurm_gpus": 2,
                 "slurm_time": "1:00:00", "slurm_extra": "qos=high", "stale_after": 120.0}
    assert cluster_options("local", stale_after=120.0) == {"stale_after": 120.0}
    with pytest.raises(ValueError, match="stale_after must be a positive"):
        executor_parameters(argparse.Namespace(**{**vars(ns), "stale_after": -5.0}))
    assert cluster_options("slurm", "gpu", 2, "1:00:00", None, None, "qos=high") == {
        "partition": "gpu", "gpus": 2, "time": "1:00:00", "extra": "qos=high"}
    assert cluster_options("local", "gpu", 2, "1:00:00") == {}
    assert cluster_options("submitit-local", "gpu", 2, "30", None, "logs") == {"time": "30",
                                                                                "folder": "logs"}
    with pytest.raises(ValueError, match="time limit"):
        executor_parameters(argparse.Namespace(**{**vars(ns), "slurm_time": "later"}))
