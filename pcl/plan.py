"""Which runs of a study are still to train, which may start now, and which finished or failed:
the :class:`Plan` every executor of :mod:`pcl.executors` works through.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

from .config import RunConfig
from .lease import LEASE_NAME, Lease
from .store import CorruptRunError, RunStore


@dataclass
class Plan:
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
    def of(cls, configs: Iterable[RunConfig], store: RunStore, stale_after: float,
           retrain_corrupt: bool = False) -> "Plan":
        """The plan for ``configs``; raises CorruptRunError naming every finished run it relies on
        that no longer verifies, unless ``retrain_corrupt`` (then they are deleted and retrained)."""
        p = cls(store, stale_after, {c.run_hash(): c for c in configs})
        p._check_finished(retrain_corrupt)
        p.todo = {h: c for h, c in p.configs.items() if not store.is_done(c)}
        p._check_parents()
        return p

    def _check_finished(self, retrain: bool) -> None:
        cfgs = [*self.configs.values(), *filter(None, (c.parent() for c in self.configs.values()))]
        relied = {c.run_hash(): c for c in cfgs if self.store.is_done(c)}
        corrupt = {}
        for h, c in relied.items():
            try:
                self.store.verify(c)
            except CorruptRunError as e:
                corrupt[h] = (c, e)
        if corrupt and not retrain:
            lines = [f"  {self.store.path(c)}: {e}" for c, e in corrupt.values()]
            raise CorruptRunError(f"{len(corrupt)} finished runs no longer match the hashes in their DONE:\n"
                                  + "\n".join(lines) + "\nDelete these run folders to retrain them, or pass "
                                  "executor_options={'retrain_corrupt': True} to have run_all retrain them.")
        for h, (c, _) in corrupt.items():
            self.store.delete(c)
            self.configs[h] = c  # a corrupt parent is retrained before its children

    def _leased(self, cfg: RunConfig) -> bool:
        return Lease(self.store.path(cfg) / LEASE_NAME, self.stale_after).is_live()

    def _abandoned(self, cfg: RunConfig) -> bool:
        """Neither finished nor being trained (DONE is checked again after the lease: a worker
        publishes DONE before it lets go of the lease)."""
        return not self.store.is_done(cfg) and not self._leased(cfg) and not self.store.is_done(cfg)

    def _check_parents(self) -> None:
        """A parent that is neither finished, planned here nor being trained elsewhere: error."""
        missing = {}
        for c in self.todo.values():
            par = c.parent()
            if par is not None and par.run_hash() not in self.configs and self._abandoned(par):
                missing[par.run_hash()] = (par, c)
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
                self._finished(h, {"hash": h, "status": "done", "trained": False, **self._acc(c)})
                continue
            par = c.parent()
            if par is None:
                continue
            ph = par.run_hash()
            if ph in self.failed:
                self.fail(h, f"its parent run {ph} failed")
            elif ph not in self.todo and self._abandoned(par):
                self.fail(h, f"its parent run {ph} ({self.store.path(par)}) is not finished and "
                             f"nobody is training it")

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
            if (par := c.parent()) is not None and not self.store.is_done(par):
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
