"""The study's population key, defined once (bottom layer), so no code spells
``(method, 'dense', 0.0)`` by hand."""
from __future__ import annotations

from typing import NamedTuple

DENSE = "dense"
FLOOR = "floor"


class PopKey(NamedTuple):
    """(method, schedule label, sparsity): a tuple, so it sorts and hashes like one."""

    method: str
    schedule: str
    sparsity: float

    @classmethod
    def dense(cls, method: str) -> PopKey:
        """The dense population every pruned population of ``method`` is compared with."""
        return cls(method, DENSE, 0.0)

    @classmethod
    def floor(cls, method: str) -> PopKey:
        """The second dense population (seeds >= preset.seeds) that measures seed noise."""
        return cls(method, FLOOR, 0.0)

    @property
    def is_dense(self) -> bool:
        return self.schedule == DENSE

    @property
    def is_floor(self) -> bool:
        return self.schedule == FLOOR
