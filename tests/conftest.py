"""Shared fixtures: single-threaded torch (the machine is small and shared), tiny models and data."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def smoke():
    """The smoke preset on 200 synthetic images per split (never touches real CIFAR-10)."""
    from pcl.presets import get_preset

    return get_preset("smoke", dataset="synthetic")


@pytest.fixture(autouse=True)
def _no_shared_store(monkeypatch, tmp_path):
    """Make sure nothing falls back to ./runs or ./data of the repository."""
    monkeypatch.setenv("PCL_RUNS", str(tmp_path / "default-runs"))
    monkeypatch.setenv("PCL_DATA", str(tmp_path / "default-data"))
