"""CUDA determinism for training: the switches (torch's reproducibility notes) two same-seed CUDA
runs need to give identical weights; the CPU is deterministic without them."""
from __future__ import annotations

import os

import torch

#: cuBLAS's workspace setting for deterministic results (read when cuBLAS is first used)
CUBLAS_WORKSPACE = ":4096:8"


class CudaDeterminism:
    """For one training on CUDA: deterministic cuDNN, ``torch.use_deterministic_algorithms``
    (warn-only: an op without a deterministic kernel warns, it does not stop the run) and cuBLAS's
    fixed workspace, unless ``cudnn_benchmark`` asks for cuDNN autotuning instead (faster, not
    bit-for-bit). Restores the previous settings afterwards."""

    def __init__(self, device: torch.device, cudnn_benchmark: bool) -> None:
        self.on = torch.device(device).type == "cuda" and not cudnn_benchmark
        self.benchmark = bool(cudnn_benchmark)
        self.old = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                    torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled())

    def record(self) -> dict:
        """The settings as ``env.json`` keeps them."""
        return {"cudnn_benchmark": self.benchmark, "cudnn_deterministic": self.on,
                "deterministic_algorithms": "warn" if self.on else "off",
                "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG") if self.on else None}

    def __enter__(self) -> "CudaDeterminism":
        if self.on:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = self.benchmark, self.on
        return self

    def __exit__(self, *exc) -> None:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = self.old[:2]
        torch.use_deterministic_algorithms(self.old[2], warn_only=self.old[3])
