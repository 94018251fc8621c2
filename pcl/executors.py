"""Where the runs of a study train, ``run(..., executor=...)``: ``local`` (worker processes; README:
Speed, GPU), ``submitit-local`` or ``slurm`` (submitit jobs, job arrays on SLURM; README: Running
the paper preset on a SLURM cluster). Every executor runs one unit of work, :func:`train_leased`
(take the run's lease, train or resume it, release the lease); a run another worker holds comes
back ``busy`` and is retried later, and a run waits for its unfinished parent (``cfg.parent()``)."""
from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

try:  # optional: only the submitit executors need it, and a prepared GPU image may lack it
    import submitit
except ImportError:
    submitit = None

from .config import RunConfig
from .executor_options import check_options, make_submitit_executor, task_options
from .executor_options import cluster_options as cluster_options  # the notebooks' entry point
from .lease import DEFAULT_STALE_AFTER, LEASE_NAME, LOG_NAME, Lease, LeaseCallback, LeaseLostError, read_lease
from .plan import Plan
from .store import RunStore


class RunsFailedError(RuntimeError):
    """Some runs of a study failed; ``failures`` maps run hash to the error text."""

    def __init__(self, failures: dict[str, str], total: int) -> None:
        self.failures = failures
        first_hash, first = next(iter(failures.items()))
        super().__init__(f"{len(failures)} of {total} runs failed; the others finished or were "
                         f"already stored. First failure, run {first_hash}:\n{first}")


# --- the unit of work ---------------------------------------------------------------------------
def _summary(cfg: RunConfig, store: RunStore, status: str, trained: bool) -> dict:
    hist = store.load_history(cfg)
    return {"hash": cfg.run_hash(), "status": status, "trained": trained,
            "test_acc": hist["test_acc"], "sparsity": hist["sparsity"]}


def train_leased(cfg: RunConfig | dict, store: RunStore | str | Path, data_root: str | None = None,
                 device: str | None = None, threads: int | None = None,
                 stale_after: float = DEFAULT_STALE_AFTER, token: str | None = None,
                 cudnn_benchmark: bool = False, compile: bool = False) -> dict:
    """Train one run under its lease (``cudnn_benchmark``, ``compile``: see ``train_run``; ``token``:
    see :class:`Lease`). Returns ``{'hash', 'status': 'done', 'trained', 'test_acc', 'sparsity'}``
    once the run is finished (``trained``: by this call), or ``{'hash', 'status': 'busy', 'holder'}``
    when another live worker holds the run (or took it over from this one)."""
    from .train import train_run

    cfg = RunConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    store = store if isinstance(store, RunStore) else RunStore(store)
    if store.is_done(cfg):
        return _summary(cfg, store, "done", trained=False)
    d = store.path(cfg)
    lease = Lease(d / LEASE_NAME, stale_after, token=token, log=d / LOG_NAME)
    if not lease.acquire():
        return {"hash": cfg.run_hash(), "status": "busy", "holder": read_lease(lease.path)}
    cb = LeaseCallback(lease)
    outcome = "failed"
    try:
        if store.is_done(cfg):  # finished by the previous holder just before we took the lease
            outcome = "already_done"
            return _summary(cfg, store, "done", trained=False)
        store.clean_orphans(cfg)
        lease.log("train", resume=(d / "checkpoint.pt").exists())
        try:
            train_run(cfg, store, data_root=data_root, device=device, progress=False, threads=threads,
                      callbacks=(cb,), cudnn_benchmark=cudnn_benchmark, compile=compile)
        except LeaseLostError:
            outcome = "lost"
            return {"hash": cfg.run_hash(), "status": "busy", "holder": read_lease(lease.path)}
        except (SystemExit, KeyboardInterrupt):
            outcome = "interrupted"  # pre-empted, timed out, stopped, or the parent died
            raise
        outcome = "finished"
        return _summary(cfg, store, "done", trained=True)
    except BaseException as err:  # release, noting on ``err`` a release that fails too
        try:
            lease.release(outcome=outcome, first_epoch=cb.first, last_epoch=cb.last)
        except Exception as e:
            err.add_note(f"(releasing the lease {lease.path} also failed: {type(e).__name__}: {e})")
        raise
    finally:
        if lease.held:  # not released yet: no error is on its way out, so a failure here is news
            lease.release(outcome=outcome, first_epoch=cb.first, last_epoch=cb.last)


class TrainJob(submitit.helpers.Checkpointable if submitit else object):
    """The callable submitted as a job: trains one run under its lease. When its job is pre-empted
    or times out, submitit requeues it (Checkpointable); called again, it resumes from the run's
    last epoch checkpoint and takes back its own lease at once (the lease carries the job's id)."""

    def __init__(self, cfg: dict, store_root: str, data_root: str | None = None, device: str | None = None,
                 threads: int | None = None, stale_after: float = DEFAULT_STALE_AFTER,
                 cudnn_benchmark: bool = False, compile: bool = False) -> None:
        self.args = (cfg, store_root, data_root, device, threads, stale_after)
        self.options = {"cudnn_benchmark": cudnn_benchmark, "compile": compile}

    def __call__(self) -> dict:
        try:  # the lease token: the identity of this job, the same after a requeue
            env = submitit.JobEnvironment()
            token = f"{env.cluster}:{env.hostname if env.cluster == 'local' else ''}:{env.job_id}"
        except (RuntimeError, AttributeError):  # not in a job; AttributeError: submitit not installed
            token = None
        return train_leased(*self.args, token=token, **self.options)


def _update_bar(bar, plan: Plan) -> None:
    if (n := plan.finished_count()) != bar.n:  # an update without change would print a refresh line
        bar.update(n - bar.n)


# --- local worker processes ----------------------------------------------------------------------
def _die_with_parent(parent_pid: int) -> None:
    """Make this process get SIGTERM when ``parent_pid`` dies (kernel first, a watcher second)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
        os._exit(1)  # SIGTERM did not end us (stuck in native code): leave anyway

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker_main(parent_pid: int) -> None:
    """A local worker process: train the runs sent as JSON lines on stdin; answer
    one JSON line per run on the original stdout (anything else printed goes to stderr)."""
    def on_term(signum, frame):
        raise SystemExit(128 + signum)  # unwinds training: the lease is released on the way out

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    _die_with_parent(parent_pid)
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        task = json.loads(line)
        try:
            result = train_leased(**task)
        except Exception as e:
            result = {"hash": RunConfig.from_dict(task["cfg"]).run_hash(), "status": "error",
                      "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
        answers.write(json.dumps(result) + "\n")
        answers.flush()


def _gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    ids = [x for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    return ids or [str(i) for i in range(torch.cuda.device_count())]


def local_workers(workers: int, n_gpus: int, per_gpu: int = 1) -> int:
    """Worker processes of the local executor: ``workers``, and on CUDA (``n_gpus`` > 0) at most
    ``per_gpu`` on each GPU (several small runs can share a GPU; one per GPU unless asked)."""
    return workers if n_gpus == 0 else max(1, min(workers, per_gpu * n_gpus))


def pick_gpu(gpus: list[str], taken: list[str | None]) -> str | None:
    """The GPU (a CUDA_VISIBLE_DEVICES entry) for a new worker: the one fewest live workers use
    (``taken``: their GPUs), first on ties; None with fewer than two GPUs (nothing to choose)."""
    if len(gpus) < 2:
        return None
    return min(gpus, key=lambda g: (taken.count(g), gpus.index(g)))


class _Worker:
    """One local worker process and the run it is training. ``gpu``: the one GPU it sees."""

    def __init__(self, gpu: str | None = None) -> None:
        self.gpu = gpu
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        paths = (str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        code = f"from pcl.executors import _worker_main; _worker_main({os.getpid()})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.run: str | None = None

    def send(self, h: str, task: dict) -> bool:
        """Hand run ``h`` to this worker; False if the worker is gone."""
        try:
            self.proc.stdin.write(json.dumps(task) + "\n")
            self.proc.stdin.flush()
        except OSError:  # died while idle: the run stays to do
            return False
        self.run = h
        return True

    def stop(self, graceful: bool) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if not graceful:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30 if graceful else 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def _run_local(plan: Plan, store: RunStore, data_root: str | None, workers: int, opts: dict, bar) -> None:
    task_base = {"store": str(store.root.resolve()), "data_root": data_root,
                 **task_options(opts), "stale_after": plan.stale_after}
    pool: list[_Worker] = []
    gpus = _gpu_ids() if opts.get("device") is None else []
    on_one_gpu = str(opts.get("device") or "").startswith("cuda")
    workers = local_workers(workers, len(gpus) or int(on_one_gpu), opts.get("workers_per_gpu") or 1)
    sel = selectors.DefaultSelector()
    graceful = False
    try:
        while plan.todo:
            running = {w.run for w in pool if w.run is not None}
            plan.sweep(running)
            idle = [w for w in pool if w.run is None]
            ready = plan.ready(running, limit=max(0, workers - len(running)))
            for c in ready:
                if not idle:
                    w = _Worker(pick_gpu(gpus, [x.gpu for x in pool]))
                    pool.append(w)
                    sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                    idle.append(w)
                w = idle.pop()
                if not w.send(c.run_hash(), {**task_base, "cfg": c.to_dict()}):
                    sel.unregister(w.proc.stdout)
                    pool.remove(w)
                    w.stop(graceful=False)
            _update_bar(bar, plan)
            if not any(w.run for w in pool):
                if plan.todo:
                    time.sleep(plan.poll_interval)
                continue
            for key, _ in sel.select(timeout=plan.poll_interval):
                w = key.data
                line = w.proc.stdout.readline()
                if line:
                    plan.handle(w.run, json.loads(line))
                    w.run = None
                    continue
                code = w.proc.wait()  # the worker died: its run failed, the others go on
                sel.unregister(w.proc.stdout)
                pool.remove(w)
                if w.run is not None:
                    plan.fail(w.run, f"the worker process training it died (exit code {code})")
            _update_bar(bar, plan)
        graceful = True
    finally:
        for w in pool:
            w.stop(graceful)
        sel.close()


# --- submitit ------------------------------------------------------------------------------------
def _job_error(job: Any, e: BaseException) -> str:
    msg = str(e).strip()
    if len(msg) > 4000:
        msg = msg[:1000] + "\n...\n" + msg[-3000:]
    try:
        logs = f" (logs: {job.paths.stderr})"
    except Exception:
        logs = ""
    return f"job {getattr(job, 'job_id', '?')} failed{logs}: {type(e).__name__}: {msg}"


def _squeue_ids() -> set[str] | None:
    """This user's jobs SLURM lists (pending, running, requeued; array tasks one by one), or None."""
    try:
        out = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%i"], capture_output=True,
                             text=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.split())


def _collect(jobs: dict[str, Any], plan: Plan, live: set[str] | None, missing: dict[str, int]) -> None:
    """Hand every ended job's answer to ``plan``. A job with a result has ended; so has one that
    SLURM (``live``: squeue's ids) no longer lists at two polls in a row: cancelled, killed, or
    failed before it started. Without accounting, submitit would wait for that one forever."""
    for h, j in list(jobs.items()):
        missing[h] = missing.get(h, 0) + 1 if live is not None and str(j.job_id) not in live else 0
        if not j.done() and missing[h] < 2:
            continue
        del jobs[h]
        if not j.done():
            plan.fail(h, f"job {j.job_id} ended without a result (cancelled or killed; SLURM no longer "
                         f"lists it); its log: {j.paths.stderr}. run_all again resumes the run.")
            continue
        try:
            plan.handle(h, j.result())
        except Exception as e:  # the job raised, or was killed without a result
            plan.fail(h, _job_error(j, e))


def _run_submitit(kind: str, plan: Plan, store: RunStore, data_root: str | None, workers: int,
                  opts: dict, bar) -> None:
    folder = Path(opts.get("folder") or store.root / ".submitit") / "%j"
    ex = make_submitit_executor(kind, folder, opts)
    max_jobs = int(opts.get("max_jobs") or (workers if kind == "submitit-local" else 10 ** 9))
    root = str(store.root.resolve())
    jobs: dict[str, Any] = {}
    missing: dict[str, int] = {}
    finished_ok = False
    try:
        while plan.todo:
            plan.sweep(jobs)
            ready = plan.ready(jobs, limit=max(0, max_jobs - len(jobs)))
            if ready:
                submitted = ex.submit_array([TrainJob(c.to_dict(), root, data_root, **task_options(opts),
                                                      stale_after=plan.stale_after) for c in ready])
                for c, j in zip(ready, submitted, strict=True):
                    jobs[c.run_hash()] = j
                if not bar.disable or kind == "slurm":
                    ids = sorted({str(j.job_id).split("_")[0] for j in submitted})
                    bar.write(f"submitted {len(submitted)} runs as {kind} job(s) {', '.join(ids)}")
            _collect(jobs, plan, _squeue_ids() if kind == "slurm" and jobs else None, missing)
            _update_bar(bar, plan)
            if plan.todo:
                time.sleep(plan.poll_interval)
        finished_ok = True
    finally:
        if not finished_ok and jobs:
            if kind == "submitit-local":
                for j in jobs.values():
                    j.cancel(check=False)
            else:
                ids = sorted({str(j.job_id).split("_")[0] for j in jobs.values()})
                print(f"[pcl] {len(jobs)} submitted runs keep running as SLURM jobs {', '.join(ids)}; "
                      f"calling run_all again waits for them (scancel {' '.join(ids)} stops them)",
                      file=sys.stderr)


def run(configs: Iterable[RunConfig], store: RunStore, data_root: str | None = None, workers: int = 1,
        progress: bool = True, executor: str = "local", executor_options: dict | None = None) -> list[dict]:
    """:func:`pcl.study.run_all` (returns and raises as documented there) with ``workers`` given."""
    opts = check_options(executor, executor_options)
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers!r}")
    stale_after = float(opts.get("stale_after") or DEFAULT_STALE_AFTER)
    plan = Plan.of(list(configs), store, stale_after, bool(opts.get("retrain_corrupt")))
    plan.poll_interval = float(opts.get("poll") or (30.0 if executor == "slurm" else 2.0))
    if data_root is not None:
        data_root = str(Path(data_root).expanduser().resolve())
    from tqdm import tqdm

    bar = tqdm(total=len(plan.configs), initial=plan.finished_count(), desc="runs", file=sys.stdout,
               mininterval=30, disable=not progress)
    try:
        if plan.todo:
            if executor == "local":
                _run_local(plan, store, data_root, workers, opts, bar)
            else:
                _run_submitit(executor, plan, store, data_root, workers, opts, bar)
        _update_bar(bar, plan)
    finally:
        bar.close()
    if plan.failed:
        raise RunsFailedError(plan.failed, len(plan.configs))
    return plan.results
