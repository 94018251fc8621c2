"""The run store: one folder per run config, named by its hash, written atomically.

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

Every file is written to a temporary name, flushed and renamed into place, so a crash leaves
either the old file or the new one. A run without DONE is partial and never read as finished; a
file whose hash differs from the one recorded is reported as corrupt, never used.

A finished run is immutable. ``finish`` writes every final file into a private temporary folder
first and publishes them under a short publish lease, DONE last; when another writer finished the
run first, its own output is discarded. So two writers never mix their files, and no reader sees
DONE before the files it lists. Temporary files (``*.tmp``) of a killed writer are never read and
are removed by the next writer of the run. Files are created readable by the group and others as
the umask allows (a store shared by a team or a cluster must be readable by all its users).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
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


def _read_umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it the only portable way (set and restore)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _share(fd_or_path: int | str | Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (mode 0600/0700) the mode a plain open would give it."""
    mode = (0o777 if directory else 0o666) & ~_UMASK
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)


def _write_failed(path: Path, err: OSError) -> OSError:
    """``err`` (a full disk, a lost mount) restated with the file and the run it was writing."""
    run = next((p for p in path.parents if _is_run_hash(p.name)), None)
    return OSError(err.errno, f"writing {path}{f' (run {run})' if run else ''} failed: {err.strerror}")


def _is_run_hash(name: str) -> bool:
    return len(name) == 12 and all(c in "0123456789abcdef" for c in name)


def _write_durable(data: bytes, path: Path) -> None:
    """Write ``data`` to the new file ``path`` and flush it to disk."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise _write_failed(path, err) from err


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _share(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_failed(path, err) from err
        raise


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def atomic_save(obj: Any, path: str | Path) -> str:
    """``torch.save`` to a temporary file and rename into place; returns the file's sha256."""
    data = _torch_bytes(obj)
    _atomic_write_bytes(data, Path(path))
    return hashlib.sha256(data).hexdigest()


def atomic_write_json(obj: Any, path: str | Path) -> str:
    data = _json_bytes(obj)
    _atomic_write_bytes(data, Path(path))
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(d: Path) -> None:
    """Make the renames into ``d`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name
            and not name.startswith(".") and name not in RESERVED)


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def read_done(run_dir: str | Path) -> dict[str, str]:
    """The DONE record of a finished run folder: {file name: sha256}.

    Raises FileNotFoundError without DONE and CorruptRunError when DONE does not hold a mapping of
    plain file names to sha256 digests that lists at least every file of ``RUN_FILES``.
    """
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
    bad = [k for k, v in rec.items() if not _plain_name(k) or not _is_sha256(v)]
    if bad:
        raise CorruptRunError(f"{p} has entries that are not a plain file name with a sha256 "
                              f"digest: {sorted(bad)[:5]}; {hint}")
    missing = [n for n in RUN_FILES if n not in rec]
    if missing:
        raise CorruptRunError(f"{p} does not list {missing}; {hint}")
    return rec


def read_config(run_dir: str | Path) -> RunConfig:
    """The RunConfig in ``<run_dir>/config.json``; CorruptRunError naming the file when unreadable."""
    p = Path(run_dir) / "config.json"
    try:
        return RunConfig.from_dict(json.loads(p.read_bytes()))
    except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        raise CorruptRunError(f"{p} is not a readable run config ({type(err).__name__}: {err}); "
                              f"delete {p.parent} to retrain this run") from err


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
            import warnings

            warnings.warn(f"checkpoint {p} is unreadable ({type(e).__name__}); restarting the run",
                          stacklevel=2)
            p.unlink(missing_ok=True)
            return None

    def finish(self, cfg: RunConfig, state_dict: dict, history: dict, logits: torch.Tensor,
               features: torch.Tensor, env: dict | None = None,
               extra_files: dict[str, Any] | None = None) -> Path:
        """Publish a finished run: its final files, then DONE with their hashes; drop the checkpoint.

        ``env`` is stored as ``env.json``; ``extra_files`` maps further plain file names to bytes
        (written as they are) or JSON-able objects. Every one is listed in DONE. First writer
        wins: if the run is already finished (another worker got there first), this call leaves
        the stored run untouched and discards its own output.
        """
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
        hashes = {"config.json": file_sha256(d / "config.json")}
        hashes.update({n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
        private = Path(tempfile.mkdtemp(prefix=".finish.", suffix=".tmp", dir=d))
        try:
            _share(private, directory=True)
            for name, data in files.items():
                _write_durable(data, private / name)
            _write_durable(_json_bytes(hashes), private / "DONE")
            self._publish(d, private, list(files))
        finally:
            shutil.rmtree(private, ignore_errors=True)
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return d

    def _publish(self, d: Path, private: Path, names: list[str]) -> None:
        """Move ``names`` and then DONE from ``private`` into ``d``, one writer at a time."""
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
        d = self.path(cfg)
        removed = []
        now = time.time()
        for folder in (d, d / "eval"):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                if not (p.name.endswith(".tmp") or p.name.endswith(".gone")):
                    continue
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
    def done_record(self, cfg: RunConfig) -> dict[str, str]:
        """{file name: sha256} of a finished run (see :func:`read_done`)."""
        return read_done(self.path(cfg))

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

    def load_config(self, cfg: RunConfig) -> RunConfig:
        return read_config(self._verified(cfg, "config.json").parent)

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
        return self.load_json(cfg, "env.json") if "env.json" in self.done_record(cfg) else None

    def verify(self, cfg: RunConfig) -> None:
        """Check every file DONE lists against its hash (raises CorruptRunError)."""
        for name in self.done_record(cfg):
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
        return [read_config(done.parent) for done in sorted(self.root.glob(f"{method or '*'}/*/DONE"))]

    def delete(self, cfg: RunConfig) -> None:
        shutil.rmtree(self.path(cfg), ignore_errors=True)
