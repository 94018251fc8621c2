"""Run leases: one trainer per run, across processes and machines, on any shared file system.

README (Runs) describes the protocol. In short: a lease is a JSON record (host, pid, job token, a
random nonce, time) hard-linked into place, which succeeds for one creator only, also on NFS where
``flock`` is often absent; so a lease is complete or absent. A lease carrying this worker's job
token (a requeued job) is taken over at once. Taking over and releasing first rename the lease to
a private name and check it, so a worker never deletes a lease not its own; a refresh raises
:class:`LeaseLostError` once the lease was taken over, so a stalled holder stops instead of
training on beside the worker that took its run over. ``LEASE.log`` records every event."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

LEASE_NAME = "LEASE"
LOG_NAME = "LEASE.log"
#: Half an hour: far longer than one epoch of any preset, short enough to recover a dead node's runs.
DEFAULT_STALE_AFTER = 1800.0
#: Seconds after which an unreadable lease (left by a crash or an older pcl) may be taken over; the
#: short wait covers the instant between the exclusive create and the rename where links are absent.
UNREADABLE_STALE_AFTER = 60.0


class LeaseLostError(RuntimeError):
    """The lease this worker held was taken over by another worker (it was judged stale)."""


def _pid_namespace() -> str:
    """Identifies the process-id space: pids are comparable only within one (containers differ)."""
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return ""


def _pid_alive(pid: int) -> bool:
    """Is ``pid`` a running (not zombie) process of this machine?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def read_lease(path: str | Path) -> dict | None:
    """The lease at ``path``: its JSON, ``{'unreadable': True, 'mtime': ...}`` while it is being
    written (or was left empty by a killed creator), or None when there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
        info = json.loads(data)
        if isinstance(info, dict) and isinstance(info.get("time"), (int, float)):
            return info
    return {"unreadable": True, "mtime": mtime}


class Lease:
    """The lease file ``path`` as seen by one would-be holder. ``token``: an identity that survives
    a restart of the same job (e.g. the cluster job id of a requeued job); a lease carrying this
    holder's token is taken over at once. ``log``: the file to append events to (None: no log)."""

    def __init__(self, path: str | Path, stale_after: float = DEFAULT_STALE_AFTER,
                 token: str | None = None, log: str | Path | None = None) -> None:
        if not stale_after > 0:
            raise ValueError(f"stale_after must be a positive number of seconds; got {stale_after!r}")
        self.path = Path(path)
        self.stale_after = float(stale_after)
        self.token = token
        self.log_path = Path(log) if log is not None else None
        self.nonce = secrets.token_hex(8)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.held = False
        self._beat = 0

    def _record(self) -> dict:
        return {"host": self.host, "pid": self.pid, "pidns": _pid_namespace(), "token": self.token,
                "nonce": self.nonce, "time": time.time(), "beat": self._beat}

    def is_stale(self, info: dict) -> bool:
        """May ``info`` (a lease read from disk) be taken over by this worker?"""
        if info.get("unreadable"):  # debris (leases are complete or absent): judged by its age
            return time.time() - info["mtime"] > min(self.stale_after, UNREADABLE_STALE_AFTER)
        if self.token is not None and info.get("token") == self.token:
            return True  # our own job, restarted (requeued after a pre-emption or time-out)
        if time.time() - info["time"] > self.stale_after:
            return True
        same_machine = info.get("host") == self.host and info.get("pidns") == _pid_namespace()
        return same_machine and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"])

    def is_live(self) -> bool:
        """Does someone (this worker included) hold a lease that must be respected?"""
        info = read_lease(self.path)
        return info is not None and (info.get("nonce") == self.nonce or not self.is_stale(info))

    def _write_private(self) -> Path:
        """This worker's lease record in a file of its own (removed again if writing fails)."""
        tmp = self.path.with_name(f"{self.path.name}.{self.nonce}.tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(self._record(), f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise OSError(err.errno, f"writing the lease {self.path} failed: {err.strerror}") from err
        return tmp

    def _create(self) -> bool:
        """Put a complete lease file in place, exclusively (a hard link: never an empty or half
        written ``LEASE``); False when one exists."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_private()
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: exclusive create, then rename the record over it
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                return False
            os.replace(tmp, self.path)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _move_aside(self, expected: dict | None) -> bool:
        """Rename the lease file to a private name; keep it there (True) only when it is
        ``expected`` (or, for ``expected=None``, this worker's own); otherwise put it back."""
        grave = self.path.with_name(f"{self.path.name}.{self.nonce}.{secrets.token_hex(4)}.gone")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return False
        moved = read_lease(grave)
        mine = moved is not None and moved.get("nonce") == self.nonce
        ok = mine if expected is None else moved == expected
        if not ok:  # someone refreshed or re-took it meanwhile: restore it, overwriting nothing
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: rename back if still free
                if not self.path.exists():
                    os.rename(grave, self.path)
        grave.unlink(missing_ok=True)
        return ok

    def acquire(self) -> bool:
        """Take the lease: True if this worker now holds it, False if a live holder has it."""
        if self.held:
            return True
        for _ in range(5):
            if self._create():
                self.held = True
                self.log("acquired")
                return True
            info = read_lease(self.path)
            if info is None:
                continue  # released between our create and read: try again
            if not self.is_stale(info):
                return False
            if self._move_aside(info) and self._create():
                self.held = True
                self.log("taken_over", previous=info)
                return True
        return False

    def check(self) -> None:
        """Raise LeaseLostError unless the lease on disk is still this worker's (reads only)."""
        info = read_lease(self.path)
        if info is None or info.get("nonce") != self.nonce:
            self.held = False
            self.log("lost", holder=info)
            raise LeaseLostError(f"the lease {self.path} was taken over by another worker "
                                 f"({_who(info)}); this worker stops")

    def refresh(self) -> None:
        """Show that the holder is alive; raises LeaseLostError if the lease was taken over."""
        self.check()
        self._beat += 1
        os.replace(self._write_private(), self.path)

    def release(self, **fields: Any) -> None:
        """Give the lease back (a no-op when this worker no longer holds it)."""
        if not self.held:
            return
        self.held = False
        if self._move_aside(None):
            self.log("released", **fields)

    def log(self, event: str, **fields: Any) -> None:
        """Append one JSON line to the lease log (best effort: a log failure never stops training)."""
        if self.log_path is None:
            return
        line = json.dumps({"event": event, "time": time.time(), "host": self.host, "pid": self.pid,
                           "token": self.token, "nonce": self.nonce, **fields}, default=str)
        with contextlib.suppress(OSError), open(self.log_path, "a") as f:
            f.write(line + "\n")


def _who(info: dict | None) -> str:
    if not info:
        return "nobody"
    if info.get("unreadable"):
        return "a holder whose lease is being written"
    return f"host {info.get('host')} pid {info.get('pid')}" + (
        f" job {info['token']}" if info.get("token") else "")


class LeaseCallback:
    """A ``train_run`` callback that refreshes the run's lease after every epoch and notes the first
    and last epoch this holder trained (a requeued job that resumed shows a first epoch after 1),
    which the worker writes into the lease log when it releases."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.first: tuple[str, int] | None = None
        self.last: tuple[str, int] | None = None

    def after_epoch(self, phase: str, epoch: int, row: dict) -> None:
        if self.first is None:
            self.first = (phase, epoch)
            self.lease.log("first_epoch", phase=phase, epoch=epoch)
        self.last = (phase, epoch)
        self.lease.refresh()
