"""The options of the executors (``run_all(..., executor_options=...)``): names, checks, and the
submitit executor they configure. Kept apart from :mod:`pcl.executors` so a bad option is refused
before any run starts, by the same code the notebooks and ``make reproduce`` call."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

try:  # optional: only the submitit executors need it (see pcl.executors)
    import submitit
except ImportError:  # pragma: no cover
    submitit = None

EXECUTORS = ("local", "submitit-local", "slurm")
#: executor_options every executor understands
COMMON_OPTIONS = ("threads", "device", "stale_after", "poll", "cudnn_benchmark", "compile",
                  "retrain_corrupt")
#: further executor_options of the local executor
LOCAL_OPTIONS = ("workers_per_gpu",)
#: further executor_options of the submitit executors
SUBMITIT_OPTIONS = ("folder", "time", "gpus", "partition", "array_parallelism", "extra",
                    "max_requeues", "max_jobs", "signal_delay")
#: minutes; the local executor's jobs run for at most this long (a week: effectively unlimited)
LOCAL_TIME_LIMIT = 7 * 24 * 60
_FLAGS = ("cudnn_benchmark", "compile", "retrain_corrupt")
_POSITIVE_INTS = ("workers_per_gpu", "threads", "signal_delay")


def parse_minutes(value: Any) -> float:
    """A time limit in minutes from a number of minutes or a SLURM time string
    ('MM', 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS')."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        minutes = float(value)
    else:
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
        if not m:
            raise ValueError(f"time limit {value!r} is not minutes or a SLURM time "
                             f"(MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)")
        days, *rest = m.groups()
        parts = [int(x) for x in rest if x is not None]
        if days is None and len(parts) < 3:  # MM or MM:SS: no hours
            parts.insert(0, 0)
        hours, mins, secs = parts + [0] * (3 - len(parts))
        minutes = int(days or 0) * 1440 + hours * 60 + mins + secs / 60
    if minutes <= 0:
        raise ValueError(f"time limit must be positive; got {value!r}")
    return minutes


def parse_sbatch_extra(extra: str | dict | None) -> dict[str, Any]:
    """Extra sbatch parameters from ``'account=abc,qos=high --mem=32G exclusive'`` (commas or
    spaces; leading dashes optional; a bare flag is True) or a dict, as submitit wants them."""
    if isinstance(extra, dict):
        return dict(extra)
    out: dict[str, Any] = {}
    for item in re.split(r"[,\s]+", "" if extra is None else str(extra).strip()):
        if not item:
            continue
        key, sep, val = item.lstrip("-").partition("=")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise ValueError(f"extra sbatch parameter {item!r} is not NAME=VALUE or a flag NAME")
        out[key] = val if sep else True
    return out


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
        v = opts.get(k)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"executor option {k} must be a positive number of seconds; got {v!r}")
    for k in _FLAGS:
        if k in opts and not isinstance(opts[k], bool):
            raise ValueError(f"executor option {k} must be True or False; got {opts[k]!r}")
    for k in _POSITIVE_INTS:
        v = opts.get(k)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"executor option {k} must be a positive integer; got {v!r}")
    if opts.get("time") is not None:
        parse_minutes(opts["time"])
    return opts


def task_options(opts: dict) -> dict:
    """The executor_options a worker passes on to ``train_leased`` with every run."""
    return {"device": opts.get("device"), "threads": opts.get("threads"),
            "cudnn_benchmark": bool(opts.get("cudnn_benchmark")), "compile": bool(opts.get("compile"))}


def cluster_options(executor: str = "local", partition: str | None = None, gpus: int | None = None,
                    time_limit: Any = None, array_parallelism: int | None = None, log_dir: str | None = None,
                    extra: str | dict | None = None, stale_after: float | None = None) -> dict:
    """``executor_options`` from the notebooks' ``slurm_*`` and ``stale_after`` parameters
    (``make reproduce``'s SLURM_* and STALE_AFTER variables): those ``executor`` uses, empty
    values left out."""
    opts: dict[str, Any] = {"stale_after": stale_after}
    if executor != "local":
        opts |= {"time": time_limit, "folder": log_dir}
    if executor == "slurm":
        opts |= {"partition": partition, "gpus": gpus, "array_parallelism": array_parallelism,
                 "extra": extra}
    return check_options(executor, {k: v for k, v in opts.items() if v not in (None, "")})


def make_submitit_executor(kind: str, folder: str | Path, opts: dict) -> Any:
    """A configured submitit executor for ``kind`` ('submitit-local' or 'slurm')."""
    if submitit is None:
        raise ImportError(f"executor {kind!r} needs submitit, which is not installed: "
                          "`pip install submitit`, or use executor='local'")
    requeues = int(opts.get("max_requeues", 20))
    if kind == "submitit-local":
        import torch

        ex = submitit.LocalExecutor(folder=str(folder), max_num_timeout=requeues)
        params: dict[str, Any] = {"timeout_min": parse_minutes(opts.get("time") or LOCAL_TIME_LIMIT)}
        # the local executor hides every GPU from a job that asks for none
        gpus = opts.get("gpus", 1 if torch.cuda.is_available() else 0)
        if gpus:
            params["gpus_per_node"] = int(gpus)
    elif kind == "slurm":
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
        if opts.get("signal_delay"):  # seconds before the time limit that submitit checkpoints
            params["signal_delay_s"] = int(opts["signal_delay"])
        extra = parse_sbatch_extra(opts.get("extra"))
        if extra:
            params["additional_parameters"] = extra
    else:
        raise ValueError(f"unknown submitit executor {kind!r}; allowed: 'submitit-local', 'slurm'")
    ex.update_parameters(**params)
    return ex
