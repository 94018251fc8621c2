"""Where the runs of a study train: local worker processes, submitit jobs, or a SLURM cluster.

Every executor runs the same unit of work, :func:`train_leased`: take the run's lease
(:mod:`pcl.lease`), train it with :func:`pcl.train.train_run` (which resumes from the run's last
epoch checkpoint) while refreshing the lease every epoch, release the lease. A run that another
worker holds comes back as ``busy`` and is retried later; a finished run is never trained again.

Executors (``run(..., executor=...)``):

* ``local``: worker processes on this machine (one torch thread each on CPU; on CUDA at most
  ``workers_per_gpu`` of them, default 1, share each visible GPU), each started as
  a fresh interpreter that imports ``pcl`` (so a script calling ``run_all`` needs no ``__main__``
  guard, unlike multiprocessing's spawn). A
  worker dies with the process that started it: it asks the kernel for a signal when its parent
  dies (Linux) and also watches its parent id, and on that signal releases its lease and exits.
* ``submitit-local``: submitit's ``LocalExecutor``; each run a real job in its own process.
* ``slurm``: submitit's ``SlurmExecutor``; runs go out as job arrays. A job that is pre-empted or
  reaches its time limit is requeued by submitit (the submitted :class:`TrainJob` is
  ``Checkpointable``) and resumes from the run's last epoch checkpoint.

Runs whose parent run (``cfg.parent()``, the dense run a one-shot run starts from) is not finished
are held back until it is. One progress bar counts finished runs; stopping and calling again picks
up what finished and submits only what is missing.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import submitit

from .config import RunConfig
from .lease import DEFAULT_STALE_AFTER, LEASE_NAME, LOG_NAME, Lease, LeaseCallback, LeaseLostError
from .store import RunStore

EXECUTORS = ("local", "submitit-local", "slurm")
#: executor_options every executor understands
COMMON_OPTIONS = ("threads", "device", "stale_after", "poll", "cudnn_benchmark", "compile")
#: further executor_options of the local executor
LOCAL_OPTIONS = ("workers_per_gpu",)
#: further executor_options of the submitit executors
SUBMITIT_OPTIONS = ("folder", "time", "gpus", "partition", "array_parallelism", "extra",
                    "max_requeues", "max_jobs")
#: minutes; the local executor's jobs run for at most this long (a week: effectively unlimited)
LOCAL_TIME_LIMIT = 7 * 24 * 60


class RunsFailedError(RuntimeError):
    """Some runs of a study failed; ``failures`` maps run hash to the error text."""

    def __init__(self, failures: dict[str, str], total: int) -> None:
        self.failures = failures
        first_hash, first = next(iter(failures.items()))
        super().__init__(f"{len(failures)} of {total} runs failed; the others finished or were "
                         f"already stored. First failure, run {first_hash}:\n{first}")


# ------------------------------------------------------------------------------------------------
# the unit of work
def _summary(cfg: RunConfig, store: RunStore, status: str, trained: bool) -> dict:
    hist = store.load_history(cfg)
    return {"hash": cfg.run_hash(), "status": status, "trained": trained,
            "test_acc": hist["test_acc"], "sparsity": hist["sparsity"]}


def train_leased(cfg: RunConfig | dict, store: RunStore | str | Path, data_root: str | None = None,
                 device: str | None = None, threads: int | None = None,
                 stale_after: float = DEFAULT_STALE_AFTER, token: str | None = None,
                 cudnn_benchmark: bool = False, compile: bool = False) -> dict:
    """Train one run under its lease (``cudnn_benchmark``, ``compile``: see ``train_run``).

    Returns ``{'hash', 'status': 'done', 'trained', 'test_acc', 'sparsity'}`` once the run is
    finished (``trained``: by this call), or ``{'hash', 'status': 'busy', 'holder'}`` when another
    live worker holds the run (or took it over from this one). ``token``: see :class:`Lease`.
    """
    from .train import train_run

    cfg = RunConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    store = store if isinstance(store, RunStore) else RunStore(store)
    if store.is_done(cfg):
        return _summary(cfg, store, "done", trained=False)
    d = store.path(cfg)
    lease = Lease(d / LEASE_NAME, stale_after, token=token, log=d / LOG_NAME)
    if not lease.acquire():
        return {"hash": cfg.run_hash(), "status": "busy", "holder": lease.holder()}
    cb = LeaseCallback(lease)
    outcome = "failed"
    try:
        if store.is_done(cfg):  # finished by the previous holder just before we took the lease
            outcome = "already_done"
            return _summary(cfg, store, "done", trained=False)
        store.clean_orphans(cfg)
        lease.log("train", resume=(d / "checkpoint.pt").exists())
        try:
            train_run(cfg, store, data_root=data_root, device=device, progress=False,
                      threads=threads, callbacks=(cb,), cudnn_benchmark=cudnn_benchmark,
                      compile=compile)
        except LeaseLostError:
            outcome = "lost"
            return {"hash": cfg.run_hash(), "status": "busy", "holder": lease.holder()}
        except (SystemExit, KeyboardInterrupt):
            outcome = "interrupted"  # pre-empted, timed out, stopped, or the parent died
            raise
        outcome = "finished"
        return _summary(cfg, store, "done", trained=True)
    finally:
        lease.release(outcome=outcome, first_epoch=cb.first, last_epoch=cb.last)


def job_token() -> str | None:
    """The identity of the submitit job this process runs in (the same after a requeue), or None."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return None
    host = env.hostname if env.cluster == "local" else ""
    return f"{env.cluster}:{host}:{env.job_id}"


class TrainJob(submitit.helpers.Checkpointable):
    """The callable submitted as a job: trains one run under its lease.

    Checkpointable: when its job is pre-empted or times out, submitit pickles this object again and
    requeues the job; the new process calls it again and ``train_run`` resumes from the run's last
    epoch checkpoint in the store (the lease carries the job's id, so the requeued job takes back
    its own lease at once).
    """

    def __init__(self, cfg: dict, store_root: str, data_root: str | None = None,
                 device: str | None = None, threads: int | None = None,
                 stale_after: float = DEFAULT_STALE_AFTER, cudnn_benchmark: bool = False,
                 compile: bool = False) -> None:
        self.cfg, self.store_root, self.data_root = cfg, store_root, data_root
        self.device, self.threads, self.stale_after = device, threads, stale_after
        self.cudnn_benchmark, self.compile = cudnn_benchmark, compile

    def __call__(self) -> dict:
        return train_leased(self.cfg, self.store_root, self.data_root, self.device, self.threads,
                            self.stale_after, token=job_token(),
                            cudnn_benchmark=self.cudnn_benchmark, compile=self.compile)


# ------------------------------------------------------------------------------------------------
# which runs are ready
@dataclass
class _Plan:
    """The runs still to finish, their parents, and when a busy run may be tried again."""

    store: RunStore
    stale_after: float
    configs: dict[str, RunConfig]
    todo: dict[str, RunConfig] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    poll_interval: float = 5.0

    @classmethod
    def of(cls, configs: Iterable[RunConfig], store: RunStore, stale_after: float) -> "_Plan":
        uniq = {c.run_hash(): c for c in configs}
        p = cls(store, stale_after, uniq)
        p.todo = {h: c for h, c in uniq.items() if not store.is_done(c)}
        p._check_parents()
        return p

    def parents(self, cfg: RunConfig) -> list[RunConfig]:
        par = cfg.parent()
        return [] if par is None else [par]

    def _leased(self, cfg: RunConfig) -> bool:
        return Lease(self.store.path(cfg) / LEASE_NAME, self.stale_after).is_live()

    def _abandoned(self, cfg: RunConfig) -> bool:
        """Neither finished nor being trained (DONE is checked again after the lease: a worker
        publishes DONE before it lets go of the lease)."""
        return (not self.store.is_done(cfg) and not self._leased(cfg)
                and not self.store.is_done(cfg))

    def _check_parents(self) -> None:
        """A parent that is neither finished, planned here nor being trained elsewhere: error."""
        missing = {}
        for c in self.todo.values():
            for par in self.parents(c):
                h = par.run_hash()
                if h not in self.configs and self._abandoned(par):
                    missing[h] = (par, c)
        if missing:
            lines = [f"  {h} ({par.method}/{par.schedule} seed {par.seed}, {self.store.path(par)}), "
                     f"parent of {c.run_hash()}" for h, (par, c) in missing.items()]
            raise ValueError(f"{len(missing)} runs need a parent run that is not in the store and "
                             f"not in this list; train the parents first (e.g. the dense stage):\n"
                             + "\n".join(lines))

    def finished_count(self) -> int:
        return len(self.configs) - len(self.todo) - len(self.failed)

    def sweep(self, running: Iterable[str]) -> None:
        """Drop runs another worker finished; fail runs whose parent failed or vanished."""
        running = set(running)
        for h, c in list(self.todo.items()):
            if h in running:
                continue
            if self.store.is_done(c):
                self._finished(h, {"hash": h, "status": "done", "trained": False,
                                   **self._acc(c)})
                continue
            for par in self.parents(c):
                ph = par.run_hash()
                if ph in self.failed:
                    self.fail(h, f"its parent run {ph} failed")
                    break
                elif ph not in self.todo and self._abandoned(par):
                    self.fail(h, f"its parent run {ph} ({self.store.path(par)}) is not finished and "
                                 f"nobody is training it")
                    break

    def _acc(self, cfg: RunConfig) -> dict:
        try:
            hist = self.store.load_history(cfg)
            return {"test_acc": hist["test_acc"], "sparsity": hist["sparsity"]}
        except Exception:  # corrupt or unreadable: reported when the run is used
            return {"test_acc": float("nan"), "sparsity": float("nan")}

    def ready(self, running: Iterable[str], limit: int | None = None) -> list[RunConfig]:
        """Runs to start now: not running, parents finished, not held by a live lease elsewhere."""
        now = time.time()
        running = set(running)
        out = []
        for h, c in self.todo.items():
            if limit is not None and len(out) >= limit:
                break
            if h in running or self.retry_at.get(h, 0) > now:
                continue
            if not all(self.store.is_done(p) for p in self.parents(c)):
                continue
            if self._leased(c):
                self.retry_at[h] = now + self.poll_interval
                continue
            out.append(c)
        return out

    def handle(self, h: str, result: dict) -> None:
        """Record a worker's answer for run ``h``."""
        status = result.get("status")
        if status == "done":
            self._finished(h, result)
        elif status == "busy":
            self.retry_at[h] = time.time() + self.poll_interval
        else:
            self.fail(h, result.get("error") or f"unexpected worker answer {result!r}")

    def _finished(self, h: str, result: dict) -> None:
        self.todo.pop(h, None)
        self.results.append({k: result[k] for k in ("hash", "test_acc", "sparsity", "trained")
                             if k in result})

    def fail(self, h: str, message: str) -> None:
        self.todo.pop(h, None)
        self.failed[h] = message


def _bar(plan: _Plan, progress: bool):
    from tqdm import tqdm

    return tqdm(total=len(plan.configs), initial=plan.finished_count(), desc="runs",
                file=sys.stdout, mininterval=30, disable=not progress)


def _update_bar(bar, plan: _Plan) -> None:
    n = plan.finished_count()
    if n != bar.n:
        bar.update(n - bar.n)


# ------------------------------------------------------------------------------------------------
# local worker processes
def _die_with_parent(parent_pid: int) -> None:
    """Make this process get SIGTERM when ``parent_pid`` dies (kernel first, a watcher second)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
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
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x for x in visible.split(",") if x.strip()] if visible else []
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


def task_options(opts: dict) -> dict:
    """The executor_options a worker passes on to :func:`train_leased` with every run."""
    return {"device": opts.get("device"), "threads": opts.get("threads"),
            "cudnn_benchmark": bool(opts.get("cudnn_benchmark", False)),
            "compile": bool(opts.get("compile", False))}


class _Worker:
    """One local worker process and the run it is training. ``gpu``: the one GPU it sees."""

    def __init__(self, gpu: str | None = None) -> None:
        self.gpu = gpu
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + (
            [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        code = f"from pcl.executors import _worker_main; _worker_main({os.getpid()})"
        self.proc = subprocess.Popen([sys.executable, "-c", code],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     text=True, bufsize=1)
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
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if not graceful:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30 if graceful else 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def _run_local(plan: _Plan, store: RunStore, data_root: str | None, workers: int, opts: dict,
               bar) -> None:
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


# ------------------------------------------------------------------------------------------------
# submitit
def parse_minutes(value: Any) -> float:
    """A time limit in minutes from a number of minutes or a SLURM time string
    ('MM', 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS')."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"time limit must be positive; got {value!r}")
        return float(value)
    s = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise ValueError(f"time limit {value!r} is not minutes or a SLURM time "
                         f"(MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        minutes = int(days) * 1440 + parts[0] * 60 + parts[1] + parts[2] / 60
    elif len(parts) == 1:
        minutes = parts[0]
    elif len(parts) == 2:  # MM:SS
        minutes = parts[0] + parts[1] / 60
    else:
        minutes = parts[0] * 60 + parts[1] + parts[2] / 60
    if minutes <= 0:
        raise ValueError(f"time limit must be positive; got {value!r}")
    return minutes


def parse_sbatch_extra(extra: str | dict | None) -> dict[str, Any]:
    """Extra sbatch parameters from ``'account=abc,qos=high --mem=32G exclusive'`` (commas or
    spaces; leading dashes optional; a bare flag is True) or a dict, as submitit wants them."""
    if extra is None or extra == "":
        return {}
    if isinstance(extra, dict):
        return dict(extra)
    out: dict[str, Any] = {}
    for item in re.split(r"[,\s]+", str(extra).strip()):
        if not item:
            continue
        key, sep, val = item.lstrip("-").partition("=")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise ValueError(f"extra sbatch parameter {item!r} is not NAME=VALUE or a flag NAME")
        out[key] = val if sep else True
    return out


def make_submitit_executor(kind: str, folder: str | Path, opts: dict) -> Any:
    """A configured submitit executor for ``kind`` ('submitit-local' or 'slurm')."""
    requeues = int(opts.get("max_requeues", 20))
    if kind == "submitit-local":
        import torch

        ex = submitit.LocalExecutor(folder=str(folder), max_num_timeout=requeues)
        params: dict[str, Any] = {"timeout_min": parse_minutes(opts.get("time") or LOCAL_TIME_LIMIT)}
        # the local executor hides every GPU from a job that asks for none
        gpus = opts.get("gpus", 1 if torch.cuda.is_available() else 0)
        if gpus:
            params["gpus_per_node"] = int(gpus)
        ex.update_parameters(**params)
        return ex
    if kind == "slurm":
        ex = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=requeues)
        params = {"job_name": "pcl"}
        if opts.get("partition"):
            params["partition"] = str(opts["partition"])
        if opts.get("time"):
            params["time"] = max(1, round(parse_minutes(opts["time"])))
        if opts.get("gpus") is not None:
            params["gpus_per_node"] = int(opts["gpus"])
        if opts.get("array_parallelism"):
            params["array_parallelism"] = int(opts["array_parallelism"])
        extra = parse_sbatch_extra(opts.get("extra"))
        if extra:
            params["additional_parameters"] = extra
        ex.update_parameters(**params)
        return ex
    raise ValueError(f"unknown submitit executor {kind!r}; allowed: 'submitit-local', 'slurm'")


def _job_error(job: Any, e: BaseException) -> str:
    msg = str(e).strip()
    if len(msg) > 4000:
        msg = msg[:1000] + "\n...\n" + msg[-3000:]
    try:
        logs = f" (logs: {job.paths.stderr})"
    except Exception:
        logs = ""
    return f"job {getattr(job, 'job_id', '?')} failed{logs}: {type(e).__name__}: {msg}"


def _run_submitit(kind: str, plan: _Plan, store: RunStore, data_root: str | None, workers: int,
                  opts: dict, bar) -> None:
    folder = Path(opts.get("folder") or store.root / ".submitit") / "%j"
    ex = make_submitit_executor(kind, folder, opts)
    max_jobs = int(opts.get("max_jobs") or (workers if kind == "submitit-local" else 10 ** 9))
    root = str(store.root.resolve())
    jobs: dict[str, Any] = {}
    finished_ok = False
    try:
        while plan.todo:
            plan.sweep(jobs)
            ready = plan.ready(jobs, limit=max(0, max_jobs - len(jobs)))
            if ready:
                to = task_options(opts)
                fns = [TrainJob(c.to_dict(), root, data_root, to["device"], to["threads"],
                                plan.stale_after, to["cudnn_benchmark"], to["compile"])
                       for c in ready]
                submitted = ex.submit_array(fns)
                for c, j in zip(ready, submitted):
                    jobs[c.run_hash()] = j
                if not bar.disable or kind == "slurm":
                    ids = sorted({str(j.job_id).split("_")[0] for j in submitted})
                    bar.write(f"submitted {len(submitted)} runs as {kind} job(s) {', '.join(ids)}")
            for h, j in list(jobs.items()):
                if not j.done():
                    continue
                del jobs[h]
                try:
                    plan.handle(h, j.result())
                except Exception as e:  # the job raised, or was killed without a result
                    plan.fail(h, _job_error(j, e))
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


# ------------------------------------------------------------------------------------------------
def check_options(executor: str, options: dict | None) -> dict:
    """``options`` validated for ``executor`` (unknown names are an error, not ignored)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; allowed: {', '.join(map(repr, EXECUTORS))}")
    opts = dict(options or {})
    allowed = COMMON_OPTIONS + (SUBMITIT_OPTIONS if executor != "local" else LOCAL_OPTIONS)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(f"unknown executor_options {unknown} for executor {executor!r}; allowed: "
                         f"{', '.join(allowed)}")
    for k in ("stale_after", "poll"):
        if k in opts and opts[k] is not None and not (isinstance(opts[k], (int, float))
                                                       and opts[k] > 0):
            raise ValueError(f"executor option {k} must be a positive number of seconds; "
                             f"got {opts[k]!r}")
    for k in ("cudnn_benchmark", "compile"):
        if k in opts and not isinstance(opts[k], bool):
            raise ValueError(f"executor option {k} must be True or False; got {opts[k]!r}")
    w = opts.get("workers_per_gpu")
    if w is not None and not (isinstance(w, int) and not isinstance(w, bool) and w > 0):
        raise ValueError(f"executor option workers_per_gpu must be a positive integer; got {w!r}")
    if opts.get("threads") is not None and not (isinstance(opts["threads"], int)
                                                 and opts["threads"] > 0):
        raise ValueError(f"executor option threads must be a positive integer; got {opts['threads']!r}")
    if opts.get("time") is not None:
        parse_minutes(opts["time"])
    return opts


def run(configs: Iterable[RunConfig], store: RunStore, data_root: str | None = None,
        workers: int = 1, progress: bool = True, executor: str = "local",
        executor_options: dict | None = None) -> list[dict]:
    """Finish every run of ``configs`` (see the module docstring); returns one summary per run that
    was not finished when called: ``{'hash', 'test_acc', 'sparsity', 'trained'}``.

    Raises :class:`RunsFailedError` after the other runs are done when some run failed.
    """
    opts = check_options(executor, executor_options)
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers!r}")
    stale_after = float(opts.get("stale_after") or DEFAULT_STALE_AFTER)
    plan = _Plan.of(list(configs), store, stale_after)
    plan.poll_interval = float(opts.get("poll") or (30.0 if executor == "slurm" else 2.0))
    if data_root is not None:
        data_root = str(Path(data_root).expanduser().resolve())
    bar = _bar(plan, progress)
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


def cluster_options(executor: str = "local", partition: str | None = None, gpus: int | None = None,
                    time_limit: Any = None, array_parallelism: int | None = None,
                    log_dir: str | None = None, extra: str | dict | None = None) -> dict:
    """``executor_options`` from the notebooks' ``slurm_*`` parameters (``make reproduce``'s
    SLURM_* variables): the ones ``executor`` uses, empty values left out."""
    if executor == "local":
        return {}
    opts = {"time": time_limit, "folder": log_dir}
    if executor == "slurm":
        opts |= {"partition": partition, "gpus": gpus, "array_parallelism": array_parallelism,
                 "extra": extra}
    return check_options(executor, {k: v for k, v in opts.items() if v not in (None, "")})
