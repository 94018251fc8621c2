"""Which machine and software stack a run came from: the facts that decide bit-for-bit equality, as
kernels (and so rounding) differ between processor models, GPU models, drivers and library releases.
A run's ``env.json`` records this fingerprint outside the config hash (README, "Reproducibility
promise"); runs are expected to be bit-equal only when their :func:`fingerprint_key` is equal."""
from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from collections import Counter
from typing import Any

import torch

#: CPU flags that change which kernels oneDNN and ATen run (and so the rounding of every result).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_bf16", "amx_tile", "amx_int8")


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model(text: str | None = None) -> str:
    """The processor's model name ('AMD EPYC 9R14 ...'), from /proc/cpuinfo where there is one."""
    for line in (_cpuinfo() if text is None else text).splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(text: str | None = None) -> list[str]:
    """The kernel-relevant instruction sets this CPU reports (a subset of :data:`KERNEL_FLAGS`)."""
    for line in (_cpuinfo() if text is None else text).splitlines():
        if line.lower().startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in KERNEL_FLAGS if f in have]
    return []


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """The fingerprint of the hardware and software stack that computes on ``device``."""
    device = torch.device(device or "cpu")
    out: dict[str, Any] = {
        "cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "arch": platform.machine(),
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(), "onednn": _version(torch.__config__.show()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu_name=props.name, compute_capability=f"{props.major}.{props.minor}",
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), driver=_nvidia_driver())
    return out


def _version(text: Any) -> str | None:
    """The version number of a oneDNN line ('- Intel(R) MKL-DNN v3.12.0 (Git Hash ...)' -> '3.12.0')
    or of a bare version; env.json files written before this parsing stored the whole line."""
    text = text if isinstance(text, str) else ""
    m = (re.search(r"(?:oneDNN|MKL-DNN)[^\n]*?v(\d+(?:\.\d+)+)", text)
         or re.fullmatch(r"\s*v?(\d+(?:\.\d+)+)\s*", text))
    return m.group(1) if m else None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


#: The fields of ``env.json`` that must be equal for bit-for-bit equality: ``machine`` fields (the
#: processor model and kernel flags or the GPU model, the versions of the numeric libraries), then
#: the run's own settings. ``cpu_capability`` is recorded but not keyed: it follows from the flags
#: and the torch version (unless ATEN_CPU_CAPABILITY overrides it).
MACHINE_FIELDS = ("cpu_model", "cpu_flags", "arch", "torch", "onednn", "gpu_name",
                  "compute_capability", "cuda", "cudnn", "driver")
RUN_FIELDS = ("device_type", "precision", "threads", "cudnn_benchmark", "compile")
#: CUDA's determinism switches (:mod:`pcl.determinism`), keyed for CUDA runs only (no effect on CPU).
CUDA_RUN_FIELDS = ("cudnn_deterministic", "deterministic_algorithms", "cublas_workspace_config")


def fingerprint(env: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run's environment that :func:`fingerprint_key` hashes (None where absent)."""
    m = env.get("machine") or {}
    run = RUN_FIELDS + (CUDA_RUN_FIELDS if env.get("device_type") == "cuda" else ())
    out = {k: m.get(k) for k in MACHINE_FIELDS} | {k: env.get(k) for k in run}
    out["onednn"] = _version(out["onednn"])
    return out


def fingerprint_key(env: dict[str, Any] | None) -> str | None:
    """A short hash of :func:`fingerprint`: two runs of one config are expected to be bit-equal
    exactly when their keys are equal. None for a run stored without a machine record."""
    if not env or not env.get("machine"):
        return None
    blob = json.dumps(fingerprint(env), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def logits_hash(logits: torch.Tensor) -> str:
    """A short hash of a run's test logits (bytes of the fp32 tensor): equal only when bit-equal."""
    t = logits.detach().to(torch.float32).contiguous().cpu()
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:12]


def summarise(envs: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The machine(s) a study was made on, from its runs' ``env.json``: one entry per fingerprint
    (most runs first) with its fields and run count; ``unrecorded`` counts runs without one."""
    keys = [fingerprint_key(e) for e in envs]
    one = {k: e for k, e in zip(keys, envs, strict=True) if k is not None}
    machines = [{"fingerprint": k, "runs": n, **fingerprint(one[k]),
                 "cpu_capability": one[k]["machine"].get("cpu_capability")}
                for k, n in Counter(k for k in keys if k is not None).most_common()]
    return {"runs": len(envs), "unrecorded": keys.count(None), "machines": machines}


def _describe_one(m: dict[str, Any]) -> str:
    if m.get("device_type") == "cuda":
        hw = (f"{m['gpu_name']} (compute capability {m['compute_capability']}, driver "
              f"{m['driver']}, CUDA {m['cuda']}, cuDNN {m['cudnn']})")
    else:
        hw = f"{m['cpu_model']} ({m['arch']}; {', '.join(m['cpu_flags'] or []) or 'no listed kernel flags'})"
    return (f"{hw}, torch {m['torch']}, oneDNN {m['onednn']}, {m['precision']} training, "
            f"{m['threads']} thread(s) per run: {m['runs']} runs (fingerprint `{m['fingerprint']}`)")


def describe(summary: dict[str, Any]) -> str:
    """One Markdown paragraph naming the machine(s) of :func:`summarise`'s summary."""
    ms = summary["machines"]
    if not ms:
        return f"No run of the {summary['runs']} records the machine it was trained on."
    head = "Made on one machine" if len(ms) == 1 else f"Made on {len(ms)} machines"
    text = f"{head}: " + "; ".join(_describe_one(m) for m in ms) + "."
    u = summary["unrecorded"]
    if u:
        text += f" {u} run{'s' if u > 1 else ''} record{'' if u > 1 else 's'} no machine."
    return text
