"""The one registry class and the study's two registries, :data:`METHODS` and :data:`SCHEDULES`
(bottom layer: filled by :mod:`pcl.methods` and :mod:`pcl.schedules`, read by :mod:`pcl.config`).

What an :class:`Entry`'s ``owns`` and ``hparams`` mean for run names: docs/ARCHITECTURE.md,
"Parameters and run names".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar


class RegistryError(ValueError):
    """An unknown name, or a registration that would clash."""


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, the config fields it owns and its own hparams."""

    name: str
    owns: tuple[str, ...] = ()
    hparams: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    color: str | None = None  # plots: one colour per entry; None = derived when drawn


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """Named entries of one kind, in registration order."""

    def __init__(self, kind: str, base: type = Entry) -> None:
        self.kind, self.base, self._entries = kind, base, {}  # base: set by the registering module

    def register(self, entry: E, replace: bool = False) -> E:
        """Add ``entry`` under its name (``replace=True`` to redefine one, e.g. in a test)."""
        if not isinstance(entry, self.base):
            raise RegistryError(f"register a {self.base.__name__} instance; got {type(entry).__name__}")
        if entry.name in self._entries and not replace:
            raise RegistryError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a temporary one)."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> E:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(f"unknown {self.kind} {name!r}; allowed: "
                                f"{', '.join(map(repr, self._entries))}") from None

    def __iter__(self) -> Iterator[E]:
        return iter(tuple(self._entries.values()))

    def owned(self) -> set[str]:
        """Every config field some entry owns."""
        return {f for e in self for f in e.owns}


METHODS: Registry = Registry("method")
SCHEDULES: Registry = Registry("pruning schedule")
