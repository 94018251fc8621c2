"""The SLURM executor against a real one-node SLURM cluster, through sbatch/squeue/scontrol/scancel.

``make test-cluster`` (cluster/run.sh) brings the cluster up, sets PCL_TEST_CLUSTER=1 and runs
these tests; anywhere else they are skipped. Runs are tiny synthetic CE configs (seconds each);
every finished run is compared with the same config trained by the local executor (one thread).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_lease import read_log

from pcl import study
from pcl.config import RunConfig
from pcl.executors import RunsFailedError
from pcl.lease import LEASE_NAME, read_lease
from pcl.store import RunStore

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(
    os.environ.get("PCL_TEST_CLUSTER") != "1",
    reason="needs the one-node SLURM cluster `make test-cluster` brings up")]

ROOT = Path(__file__).resolve().parent.parent
OPTS = {"poll": 1.0, "threads": 1, "time": 60}  # submitit's default limit (5 min) is short here
WAIT = 1800  # seconds: a loaded machine imports torch slowly; a hang still fails


def _cfg(seed: int, n: int = 40, epochs: int = 1) -> RunConfig:
    return RunConfig(dataset="synthetic", synthetic_size=n, depth=10, width=1, epochs=epochs,
                     batch_size=16, finetune_epochs=1, finetune_batch_size=16, seed=seed)


CHILDREN = [replace(_cfg(s), pruning="oneshot", sparsity=0.5) for s in (0, 1)]
DENSE = [c.parent() for c in CHILDREN]
# long enough that an idle machine cannot finish them between their first checkpoint and the
# scontrol/scancel or time-limit cut that follows it (12 epochs, and 90 epochs of 200 images for
# the time limit, did: those runs finished first)
REQUEUED, CANCELLED, TIMED_OUT = _cfg(10, 200, 40), _cfg(11, 200, 60), _cfg(12, 2000, 90)
ORPHANED = [_cfg(s, 200, 4) for s in (20, 21)]
SHARED = [_cfg(s) for s in (30, 31, 32)]


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> RunStore:
    """Where the local executor trains the same configs (one torch thread per run)."""
    return RunStore(tmp_path_factory.mktemp("local"))


def _slurm(cfgs, store: RunStore, **opts) -> list[dict]:
    return study.run_all(cfgs, store, progress=False, executor="slurm",
                         executor_options={**OPTS, **opts})


def _same_as_local(store: RunStore, local: RunStore, cfgs) -> None:
    study.run_all(cfgs, local, workers=2, progress=False, executor_options={"threads": 1})
    for c in cfgs:
        for load in (RunStore.load_state, RunStore.load_logits, RunStore.load_features):
            a, b = load(store, c), load(local, c)
            same = (all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
                    if isinstance(a, dict) else torch.equal(a, b))
            assert same, f"{load.__name__} of run {c.run_hash()} differs from the local executor's"


def _events(store: RunStore, cfg: RunConfig, event: str) -> list[dict]:
    return [e for e in read_log(store.path(cfg)) if e["event"] == event]


def _resumed(store: RunStore, cfg: RunConfig, same_job: bool) -> None:
    """The run trained from scratch once, then only resumed from checkpoints (a later epoch)."""
    trains, firsts = _events(store, cfg, "train"), _events(store, cfg, "first_epoch")
    assert [t["resume"] for t in trains] == [False] + [True] * (len(trains) - 1) and len(trains) > 1
    assert firsts[0]["epoch"] == 1 and all(f["epoch"] > 1 for f in firsts[1:])
    assert (trains[0]["token"] == trains[1]["token"]) == same_job


def _job(store: RunStore, cfg: RunConfig) -> str:
    """The SLURM job id (``123`` or ``123_4``) holding the run's lease: its token ``slurm::<id>``."""
    return read_lease(store.path(cfg) / LEASE_NAME)["token"].split(":")[-1]


def _wait(what: str, ok, timeout: float = WAIT) -> None:
    t_end = time.time() + timeout
    while not ok():
        assert time.time() < t_end, f"timed out after {timeout:.0f} s waiting until {what}"
        time.sleep(0.5)


def _squeue() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def _state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                          text=True).stdout.strip()


def _checkpointed(store: RunStore, cfg: RunConfig):
    return lambda: (store.path(cfg) / "checkpoint.pt").exists() and (store.path(cfg) / LEASE_NAME).exists()


def _in_thread(fn, *args, **kw) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["out"] = fn(*args, **kw)
        except BaseException as e:
            box["err"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _submitter(store: RunStore, cfgs) -> subprocess.Popen:
    """A separate submitting process running run_all(..., executor='slurm')."""
    code = textwrap.dedent(f"""
        from pcl import study
        from pcl.config import RunConfig
        from pcl.store import RunStore
        cfgs = [RunConfig.from_dict(d) for d in {[c.to_dict() for c in cfgs]!r}]
        study.run_all(cfgs, RunStore({str(store.root)!r}), progress=False, executor="slurm",
                      executor_options={OPTS!r})
    """)
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True)


# ------------------------------------------------------------------------------------------------
def test_slurm_version_is_recorded():
    print(f"\n{os.environ.get('PCL_SLURM_VERSION', 'unknown SLURM')}")
    assert subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.startswith("slurm")


def test_job_arrays_and_children_in_a_later_wave(tmp_path, local):
    """Dense parents go out as one job array; their one-shot children only once they finished."""
    store = RunStore(tmp_path)
    out = _slurm(CHILDREN + DENSE, store)
    assert sorted(r["hash"] for r in out) == sorted(c.run_hash() for c in CHILDREN + DENSE)
    jobs = {c.run_hash(): _events(store, c, "acquired")[0]["token"].split(":")[-1]
            for c in CHILDREN + DENSE}
    parents = {jobs[c.run_hash()] for c in DENSE}
    assert len({j.split("_")[0] for j in parents}) == 1 and all("_" in j for j in parents)
    for child, par in zip(CHILDREN, DENSE, strict=True):
        job = jobs[child.run_hash()]
        assert int(job.split("_")[0]) > int(jobs[par.run_hash()].split("_")[0])  # a later submission
        started = _events(store, child, "acquired")[0]["time"]
        assert started >= (store.path(par) / "DONE").stat().st_mtime
    _same_as_local(store, local, CHILDREN + DENSE)


def test_requeued_job_resumes_and_cancelled_job_is_reported_then_finished(tmp_path, local):
    """`scontrol requeue` on one array task: it resumes from its checkpoint; `scancel` on the other:
    run_all names the job's log, and calling it again resumes the run."""
    store = RunStore(tmp_path)
    thread, box = _in_thread(_slurm, [REQUEUED, CANCELLED], store)
    _wait("both runs checkpointed an epoch", lambda: all(
        _checkpointed(store, c)() for c in (REQUEUED, CANCELLED)))
    cancelled = _job(store, CANCELLED)
    subprocess.run(["scancel", cancelled], check=True)
    subprocess.run(["scontrol", "requeue", _job(store, REQUEUED)], check=True)
    thread.join(WAIT)
    err = box.get("err")
    assert isinstance(err, RunsFailedError) and list(err.failures) == [CANCELLED.run_hash()], box
    assert f"job {cancelled} ended without a result" in str(err)
    log = Path(re.search(r"its log: (\S+)\.", str(err)).group(1))
    assert log.is_file() and log.is_relative_to(store.root / ".submitit")
    _resumed(store, REQUEUED, same_job=True)
    assert [r["hash"] for r in _slurm([REQUEUED, CANCELLED], store)] == [CANCELLED.run_hash()]
    _resumed(store, CANCELLED, same_job=False)
    _same_as_local(store, local, [REQUEUED, CANCELLED])


def test_job_reaching_its_time_limit_is_checkpointed_requeued_and_finishes(tmp_path, local):
    """The job's time limit is cut to the next minute or two once it trains; SLURM signals it
    (submitit's USR2, 90 s ahead), submitit checkpoints and requeues it, and it finishes (its limit
    is given back while it waits to start again: its next start would be signalled at once)."""
    store = RunStore(tmp_path)
    thread, box = _in_thread(_slurm, [TIMED_OUT], store, max_requeues=3, time=10)
    _wait("the run checkpointed an epoch", _checkpointed(store, TIMED_OUT))
    job = _job(store, TIMED_OUT)
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    h, m, s = (info.split("RunTime=")[1].split()[0].split("-")[-1]).split(":")
    minutes = int(h) * 60 + int(m) + 1 + (int(s) > 0)
    subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}"], check=True)
    _wait("the job is requeued", lambda: _state(job) == "PENDING")
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True)
    thread.join(WAIT)
    assert "out" in box, box
    _resumed(store, TIMED_OUT, same_job=True)
    logs = "".join(p.read_text() for p in (store.root / ".submitit").rglob(f"{job}_*log.*"))
    assert "timed-out" in logs.lower() or "timed out" in logs.lower(), logs[-2000:]
    _same_as_local(store, local, [TIMED_OUT])


def test_killed_submitter_leaves_jobs_running_and_a_rerun_waits_for_them(tmp_path, local):
    store = RunStore(tmp_path)
    sub = _submitter(store, ORPHANED)
    _wait("both jobs hold their run's lease", lambda: all(
        (store.path(c) / LEASE_NAME).exists() for c in ORPHANED))
    os.killpg(sub.pid, signal.SIGKILL)
    sub.wait()
    jobs = {_job(store, c) for c in ORPHANED}
    assert jobs <= _squeue()  # the jobs outlive their submitter
    out = _slurm(ORPHANED, store)
    assert sorted((r["hash"], r["trained"]) for r in out) == sorted(
        (c.run_hash(), False) for c in ORPHANED)  # adopted: finished by the first jobs
    assert all(len(_events(store, c, "train")) == 1 for c in ORPHANED)  # nothing trained twice
    _same_as_local(store, local, ORPHANED)


def test_two_submitters_on_one_store_train_every_run_once(tmp_path, local):
    store = RunStore(tmp_path)
    sub = _submitter(store, SHARED)
    _slurm(SHARED, store)
    assert sub.wait(WAIT) == 0
    assert all(len(_events(store, c, "train")) == 1 for c in SHARED)
    _same_as_local(store, local, SHARED)
