"""The run store: one folder per run config, named by its hash, written atomically.

Layout of a run folder ``<root>/<method>/<hash>/``::

    config.json       the full RunConfig (written first)
    checkpoint.pt     the last finished epoch while training (deleted when the run is done)
    model.pt          final weights (a WideResNet state dict; pruned zeros included)
    history.json      per-epoch metrics and pruning events
    logits.pt         test-set logits (10,000 x classes)
    features.pt       test-set penultimate features (10,000 x feature dim)
    DONE              written last: JSON with the sha256 of every file above
    eval/<name>.pt    evaluation artifacts, each with a <name>.pt.sha256 written after it

Every file is written to a temporary name, flushed and renamed into place, so a crash leaves
either the old file or the new one. A run without DONE is partial and never read as finished; a
file whose hash differs from the one recorded is reported as corrupt, never used.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .config import RunConfig

RUN_FILES = ("config.json", "model.pt", "history.json", "logits.pt", "features.pt")


class CorruptRunError(RuntimeError):
    """A stored file does not match its recorded hash, or cannot be read."""


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | Path) -> str:
    """``torch.save`` to a temporary file and rename into place; returns the file's sha256."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    _atomic_write_bytes(data, Path(path))
    return hashlib.sha256(data).hexdigest()


def atomic_write_json(obj: Any, path: str | Path) -> str:
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    _atomic_write_bytes(data, Path(path))
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunStore:
    """Runs on disk, keyed by config hash. ``root`` defaults to ``$PCL_RUNS`` or ``runs/``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root if root is not None else os.environ.get("PCL_RUNS", "runs"))

    def path(self, cfg: RunConfig) -> Path:
        return self.root / cfg.method / cfg.run_hash()

    def is_done(self, cfg: RunConfig) -> bool:
        return (self.path(cfg) / "DONE").exists()

    # --- writing -----------------------------------------------------------------------------
    def begin(self, cfg: RunConfig) -> Path:
        """Create the run folder and write its config (idempotent)."""
        d = self.path(cfg)
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "config.json").exists():
            atomic_write_json(cfg.to_dict(), d / "config.json")
        return d

    def save_checkpoint(self, cfg: RunConfig, state: dict) -> None:
        atomic_save(state, self.path(cfg) / "checkpoint.pt")

    def load_checkpoint(self, cfg: RunConfig) -> dict | None:
        """The last epoch checkpoint, or None (absent, or unreadable: then it is removed)."""
        p = self.path(cfg) / "checkpoint.pt"
        if not p.exists():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated or damaged: restart cleanly rather than use it
            import warnings

            warnings.warn(f"checkpoint {p} is unreadable ({type(e).__name__}); restarting the run")
            p.unlink()
            return None

    def finish(self, cfg: RunConfig, state_dict: dict, history: dict, logits: torch.Tensor,
               features: torch.Tensor) -> Path:
        """Write the final files, then DONE with their hashes; drop the checkpoint."""
        d = self.begin(cfg)
        hashes = {
            "config.json": file_sha256(d / "config.json"),
            "model.pt": atomic_save({k: v.cpu() for k, v in state_dict.items()}, d / "model.pt"),
            "history.json": atomic_write_json(history, d / "history.json"),
            "logits.pt": atomic_save(logits.float().cpu(), d / "logits.pt"),
            "features.pt": atomic_save(features.float().cpu(), d / "features.pt"),
        }
        atomic_write_json(hashes, d / "DONE")
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return d

    # --- reading -----------------------------------------------------------------------------
    def _verified(self, cfg: RunConfig, name: str) -> Path:
        d = self.path(cfg)
        if not (d / "DONE").exists():
            raise FileNotFoundError(f"run {d} is not finished (no DONE marker); train it first")
        try:
            hashes = json.loads((d / "DONE").read_text())
            expected = hashes[name]
        except (json.JSONDecodeError, KeyError) as e:
            raise CorruptRunError(f"{d / 'DONE'} is damaged ({e}); delete {d} to retrain") from None
        p = d / name
        if not p.exists() or file_sha256(p) != expected:
            raise CorruptRunError(f"{p} is missing or does not match the hash recorded in DONE; "
                                  f"delete {d} to retrain this run")
        return p

    def load_config(self, cfg: RunConfig) -> RunConfig:
        return RunConfig.from_dict(json.loads(self._verified(cfg, "config.json").read_text()))

    def load_state(self, cfg: RunConfig) -> dict:
        return torch.load(self._verified(cfg, "model.pt"), map_location="cpu", weights_only=True)

    def load_history(self, cfg: RunConfig) -> dict:
        return json.loads(self._verified(cfg, "history.json").read_text())

    def load_logits(self, cfg: RunConfig) -> torch.Tensor:
        return torch.load(self._verified(cfg, "logits.pt"), map_location="cpu", weights_only=True)

    def load_features(self, cfg: RunConfig) -> torch.Tensor:
        return torch.load(self._verified(cfg, "features.pt"), map_location="cpu", weights_only=True)

    def verify(self, cfg: RunConfig) -> None:
        """Check every file of a finished run against DONE (raises CorruptRunError)."""
        for name in RUN_FILES:
            self._verified(cfg, name)

    # --- evaluation artifacts ----------------------------------------------------------------
    def artifact(self, cfg: RunConfig, name: str, compute: Callable[[], Any]) -> Any:
        """Load ``eval/<name>.pt`` if complete and intact, else compute, store and return it."""
        p = self.path(cfg) / "eval" / f"{name}.pt"
        side = p.with_name(p.name + ".sha256")
        if p.exists() and side.exists():
            if file_sha256(p) != side.read_text().strip():
                raise CorruptRunError(f"{p} does not match its recorded hash; delete it to recompute")
            return torch.load(p, map_location="cpu", weights_only=False)
        value = compute()
        digest = atomic_save(value, p)
        _atomic_write_bytes(digest.encode(), side)
        return value

    def finished(self, method: str | None = None) -> list[RunConfig]:
        """Configs of every finished run in the store (optionally of one method)."""
        out = []
        for done in sorted(self.root.glob(f"{method or '*'}/*/DONE")):
            out.append(RunConfig.from_dict(json.loads((done.parent / "config.json").read_text())))
        return out

    def delete(self, cfg: RunConfig) -> None:
        shutil.rmtree(self.path(cfg), ignore_errors=True)
