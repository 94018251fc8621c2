"""The run store: one folder per run config, named by its hash (README: Runs).

Layout of a run folder ``<root>/<method>/<hash>/``::

    config.json       the full RunConfig (written first)
    checkpoint.pt     the last finished epoch while training (deleted when the run is done)
    LEASE             while a worker trains the run (pcl.lease); LEASE.log: who trained it, when
    model.pt          final weights (a WideResNet state dict; pruned zeros included)
    history.json      per-epoch metrics and pruning events
    logits.pt         test-set logits (10,000 x classes)
    features.pt       test-set penultimate features (10,000 x feature dim)
    env.json          where and how it trained (versions, device, threads), when given to finish
    DONE              written last: JSON with the sha256 of every file above that it lists
    eval/<name>.pt    evaluation artifacts, each with a <name>.pt.sha256 written after it

Every file is written under a temporary name (``*.tmp``, never read), flushed and renamed into
place; a run without DONE is never read as finished; files get the mode a plain open gives them."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .config import RunConfig

#: The file that marks a folder as a run store (``make clean-runs`` deletes only such folders).
STORE_MARKER = ".pcl-store"
RUN_FILES = ("config.json", "model.pt", "history.json", "logits.pt", "features.pt")
#: Names a run folder uses for its own bookkeeping: never an extra file of ``finish``.
RESERVED = ("DONE", "checkpoint.pt", "LEASE", "LEASE.log", "PUBLISH", "eval")
#: Seconds after which an unfinished publish (a writer killed while moving its files) is stale.
PUBLISH_STALE_AFTER = 600.0


class CorruptRunError(RuntimeError):
    """A stored file does not match its recorded hash, or cannot be read."""


def _is_hex(s: Any, n: int) -> bool:
    """Is ``s`` a string of ``n`` lowercase hex digits (a run hash: 12, a sha256: 64)?"""
    return isinstance(s, str) and len(s) == n and all(c in "0123456789abcdef" for c in s)


def _write_durable(data: bytes, path: Path, final: Path | None = None) -> None:
    """Write ``data`` to the new file ``path``, flush it to disk and (given ``final``) rename it
    there. A failure (a full disk, a lost mount) is restated naming the file and its run."""
    try:
        with open(path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if final is not None:
            os.replace(path, final)
    except OSError as err:
        shown = final or path
        run = next((p for p in shown.parents if _is_hex(p.name, 12)), None)
        raise OSError(err.errno, f"writing {shown}{f' (run {run})' if run else ''} failed: "
                                 f"{err.strerror}") from err


def _atomic_write_bytes(data: bytes, path: str | Path) -> str:
    """Write ``data`` to ``path`` through a temporary file; returns its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_durable(data, tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def atomic_save(obj: Any, path: str | Path) -> str:
    """``torch.save`` to a temporary file and rename into place; returns the file's sha256."""
    return _atomic_write_bytes(_torch_bytes(obj), path)


def atomic_write_json(obj: Any, path: str | Path) -> str:
    return _atomic_write_bytes(_json_bytes(obj), path)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(d: Path) -> None:
    """Make the renames into ``d`` durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name
            and not name.startswith(".") and name not in RESERVED)


def read_done(run_dir: str | Path) -> dict[str, str]:
    """The DONE record of a finished run folder: {file name: sha256}. Raises FileNotFoundError
    without DONE, CorruptRunError unless DONE maps plain file names to sha256 digests, listing at
    least every file of ``RUN_FILES``."""
    d = Path(run_dir)
    p = d / "DONE"
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"run {d} is not finished (no DONE marker); train it first") from None
    hint = f"delete {d} to retrain this run"
    try:
        rec = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptRunError(f"{p} is not valid JSON ({e}); {hint}") from None
    if not isinstance(rec, dict):
        raise CorruptRunError(f"{p} holds a JSON {type(rec).__name__} ({raw[:40]!r}), not the "
                              f"mapping of file names to sha256 digests it should; {hint}")
    bad = [k for k, v in rec.items() if not _plain_name(k) or not _is_hex(v, 64)]
    if bad:
        raise CorruptRunError(f"{p} has entries that are not a plain file name with a sha256 "
                              f"digest: {sorted(bad)[:5]}; {hint}")
    missing = [n for n in RUN_FILES if n not in rec]
    if missing:
        raise CorruptRunError(f"{p} does not list {missing}; {hint}")
    return rec


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
        if not (self.root / STORE_MARKER).exists():
            _atomic_write_bytes(b"a pcl run store (make clean-runs deletes only folders holding this file)\n",
                                self.root / STORE_MARKER)
        if not (d / "config.json").exists():
            atomic_write_json(cfg.to_dict(), d / "config.json")
        return d

    def save_checkpoint(self, cfg: RunConfig, state: dict) -> None:
        """Save the last epoch (skipped once the run is finished: a done run stays as it is)."""
        if not self.is_done(cfg):
            atomic_save(state, self.path(cfg) / "checkpoint.pt")

    def load_checkpoint(self, cfg: RunConfig) -> dict | None:
        """The last epoch checkpoint, or None (absent, or unreadable: then it is removed)."""
        p = self.path(cfg) / "checkpoint.pt"
        if not p.exists():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated or damaged: restart cleanly rather than use it
            warnings.warn(f"checkpoint {p} is unreadable ({type(e).__name__}); restarting the run",
                          stacklevel=2)
            p.unlink(missing_ok=True)
            return None

    def finish(self, cfg: RunConfig, state_dict: dict, history: dict, logits: torch.Tensor,
               features: torch.Tensor, env: dict | None = None,
               extra_files: dict[str, Any] | None = None) -> Path:
        """Publish a finished run: its final files, then DONE with their hashes; drop the checkpoint.
        ``env`` is stored as ``env.json``; ``extra_files`` maps further plain file names to bytes
        (written as they are) or JSON-able objects; DONE lists every one. The files go to a private
        folder first, so two writers never mix them. First writer wins: a run already finished (by
        another worker) is left untouched and this call's output discarded."""
        d = self.begin(cfg)
        if self.is_done(cfg):
            (d / "checkpoint.pt").unlink(missing_ok=True)
            return d
        extras = dict(extra_files or {})
        if env is not None:
            extras["env.json"] = env
        for name in extras:
            if not _plain_name(name) or name in RUN_FILES:
                raise ValueError(f"extra file name {name!r} is not allowed: use a plain file name "
                                 f"other than {', '.join(RUN_FILES + RESERVED)}")
        files = {
            "model.pt": _torch_bytes({k: v.cpu() for k, v in state_dict.items()}),
            "history.json": _json_bytes(history),
            "logits.pt": _torch_bytes(logits.float().cpu()),
            "features.pt": _torch_bytes(features.float().cpu()),
            **{n: v if isinstance(v, bytes) else _json_bytes(v) for n, v in extras.items()},
        }
        hashes = {"config.json": file_sha256(d / "config.json"),
                  **{n: hashlib.sha256(b).hexdigest() for n, b in files.items()}}
        private = d / f".finish.{secrets.token_hex(8)}.tmp"
        private.mkdir()
        try:
            for name, data in {**files, "DONE": _json_bytes(hashes)}.items():  # DONE last
                _write_durable(data, private / name)
            self._publish(d, private, list(files))
        finally:
            shutil.rmtree(private, ignore_errors=True)
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return d

    def _publish(self, d: Path, private: Path, names: list[str]) -> None:
        """Move ``names`` and then DONE from ``private`` into ``d``, one writer at a time (under the
        ``PUBLISH`` lease), so no reader sees DONE before the files it lists."""
        from .lease import Lease

        lock = Lease(d / "PUBLISH", stale_after=PUBLISH_STALE_AFTER)
        while not lock.acquire():
            if (d / "DONE").exists():
                return  # the other writer published: keep its run
            time.sleep(0.05)
        try:
            if (d / "DONE").exists():
                return
            for name in names:  # a writer stalled past PUBLISH_STALE_AFTER stops here
                lock.check()  # (LeaseLostError) instead of moving its files over the new writer's
                os.replace(private / name, d / name)
            _fsync_dir(d)
            lock.check()
            try:  # link: never replaces a DONE (none can appear while we hold the lock)
                os.link(private / "DONE", d / "DONE")
            except FileExistsError:
                return
            except OSError:  # no hard links on this file system
                os.replace(private / "DONE", d / "DONE")
            _fsync_dir(d)
        finally:
            lock.release()

    def clean_orphans(self, cfg: RunConfig, min_age: float = 60.0) -> list[Path]:
        """Remove temporary files a killed writer left in the run folder (and its eval/), if older
        than ``min_age`` seconds (younger ones may belong to a writer still at work)."""
        d, removed, now = self.path(cfg), [], time.time()
        folders = [f for f in (d, d / "eval") if f.is_dir()]
        for p in (e for f in folders for e in f.iterdir() if e.name.endswith((".tmp", ".gone"))):
            try:
                if now - p.lstat().st_mtime < min_age:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except FileNotFoundError:
                continue
        return removed

    # --- reading -----------------------------------------------------------------------------
    def _verified(self, cfg: RunConfig, name: str) -> Path:
        d = self.path(cfg)
        hashes = read_done(d)
        if name not in hashes:
            raise FileNotFoundError(f"{d / 'DONE'} does not list {name!r}: the run was stored "
                                    f"without it (it lists {sorted(hashes)})")
        p = d / name
        if not p.exists() or file_sha256(p) != hashes[name]:
            raise CorruptRunError(f"{p} is missing or does not match the hash recorded in DONE; "
                                  f"delete {d} to retrain this run")
        return p

    def load_state(self, cfg: RunConfig) -> dict:
        return torch.load(self._verified(cfg, "model.pt"), map_location="cpu", weights_only=True)

    def load_history(self, cfg: RunConfig) -> dict:
        return json.loads(self._verified(cfg, "history.json").read_text())

    def load_logits(self, cfg: RunConfig) -> torch.Tensor:
        return torch.load(self._verified(cfg, "logits.pt"), map_location="cpu", weights_only=True)

    def load_features(self, cfg: RunConfig) -> torch.Tensor:
        return torch.load(self._verified(cfg, "features.pt"), map_location="cpu", weights_only=True)

    def load_json(self, cfg: RunConfig, name: str) -> Any:
        """A verified JSON file of a finished run (e.g. ``env.json``)."""
        return json.loads(self._verified(cfg, name).read_text())

    def load_env(self, cfg: RunConfig) -> dict | None:
        """``env.json`` of a finished run, or None for a run stored without it."""
        return self.load_json(cfg, "env.json") if "env.json" in read_done(self.path(cfg)) else None

    def verify(self, cfg: RunConfig) -> None:
        """Check every file DONE lists against its hash (raises CorruptRunError)."""
        for name in read_done(self.path(cfg)):
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
        _atomic_write_bytes(atomic_save(value, p).encode(), side)
        return value

    def delete(self, cfg: RunConfig) -> None:
        shutil.rmtree(self.path(cfg), ignore_errors=True)
