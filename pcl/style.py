"""The figure style in one place: one colour per method, one marker and line style per schedule,
read from the registries at every figure (a method or schedule registered later, or without a
colour, gets its own), and the scale stamp, under everything a figure draws (so it never runs over
an axis or a legend)."""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from . import methods, schedules

#: Colours handed to methods registered without one, in registry order, skipping claimed ones.
CYCLE = tuple(f"tab:{c}" for c in ("blue", "orange", "green", "purple", "brown", "pink", "olive",
                                   "cyan", "red", "gray"))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)))
#: What belongs to no method: images that are not PIEs, PIEs two methods share.
OTHER = "0.6"


def _ordered(known: Iterable[str], present: Iterable[str]) -> list[str]:
    """``known`` in its order, then the names of ``present`` it lacks, sorted."""
    known = list(known)
    return known + sorted(set(present) - set(known))


def method_order(present: Iterable[str]) -> list[str]:
    """The methods in ``present`` in registry order (unregistered names last, sorted)."""
    present = set(present)
    return [m for m in _ordered(methods.names(), present) if m in present]


def method_label(m: str) -> str:
    """A method's display label ('CE', 'SupCon', 'SimCLR'; the name itself when unregistered)."""
    return methods.labels().get(m, m)


def method_colors(present: Iterable[str] = ()) -> dict[str, str]:
    """Every registered method's colour (its registry colour, else the next free one of
    :data:`CYCLE` in registry order), then unregistered names of ``present``."""
    own = {n: methods.get(n).color for n in methods.names()}
    free = itertools.cycle([c for c in CYCLE if c not in own.values()] or CYCLE)
    return {n: own.get(n) or next(free) for n in _ordered(own, present)}


def schedule_order(present: Iterable[str] = ()) -> list[str]:
    """Population labels: the main schedules, 'dense', the other registered schedules, then the
    labels of ``present`` none of them has (onset-sweep windows, the noise floor), sorted."""
    mains = schedules.main_schedules()
    rest = ["dense" if n == "none" else n for n in schedules.names() if n not in mains]
    return _ordered([*mains, *rest], present)


def schedule_styles(present: Iterable[str] = ()) -> dict[str, dict]:
    """``marker`` and ``ls`` (line style) of every population label, by :func:`schedule_order`."""
    return {s: {"marker": MARKERS[i % len(MARKERS)], "ls": LINES[i % len(LINES)]}
            for i, s in enumerate(schedule_order(present))}


def legend(fig: plt.Figure, ms: Iterable[str], scheds: Iterable[str] = (), other: str = "") -> None:
    """One legend for the figure, right of the axes: a colour per method, a marker per schedule
    (``other``: what the grey :data:`OTHER` stands for, when the figure uses it)."""
    ms, scheds = list(ms), list(scheds)
    colours, st = method_colors(ms), schedule_styles(scheds)
    handles = [Line2D([], [], color=OTHER, lw=4, label=other)] if other else []
    handles += [Line2D([], [], color=colours[m], lw=4, label=method_label(m)) for m in ms]
    handles += [Line2D([], [], color="0.3", label=s, **st[s]) for s in scheds]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)


def stamp(fig: plt.Figure, label: str) -> None:
    """Write ``label`` (the scale a figure was made at) under everything ``fig`` draws."""
    fig.draw_without_rendering()  # runs the layout, so the extent below is the final one
    box = fig.get_tightbbox()  # inches
    w, h = fig.get_size_inches()
    fig.text(box.x1 / w, (box.y0 - 0.05) / h, label, ha="right", va="top", fontsize=7, color="0.35")
