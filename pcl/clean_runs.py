"""Is a folder a run store? ``make clean-runs`` deletes one only after asking this module:
``python -m pcl.clean_runs --is-store DIR`` exits 0 when DIR is a run store, else 1 and says why."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .store import STORE_MARKER, _is_hex

#: Entries a store root may hold besides method folders: submitit's default log folder, the table cache.
STORE_ROOT_EXTRAS = (".submitit", ".tables")


def not_a_store_reason(root: str | Path) -> str | None:
    """Why ``root`` is not a run store, or None when it is one (or is empty, or does not exist).
    A run store holds the marker file :data:`STORE_MARKER` (written with its first run), method
    folders (plus :data:`STORE_ROOT_EXTRAS`), and in a method folder only run folders named by a
    12-hex-digit run hash. Checked before deleting a store wholesale, so that a mistyped path (the
    repository, a home folder, a folder of empty folders) is refused rather than removed."""
    if str(root).strip() == "":
        return "no folder given"
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return None
    if not root.is_dir():  # a link to a folder is checked as that folder
        return f"{root} is not a folder"
    entries = sorted(p for p in root.iterdir() if p.name != STORE_MARKER)
    if entries and not (root / STORE_MARKER).is_file():
        return (f"{root} has no {STORE_MARKER} marker (a store written by an older pcl: "
                f"`touch {root / STORE_MARKER}` if it is one)")
    for entry in entries:
        if entry.name in STORE_ROOT_EXTRAS and entry.is_dir() and not entry.is_symlink():
            continue
        if entry.is_symlink() or not entry.is_dir() or entry.name.startswith("."):
            return f"{entry} is not a method folder of runs"
        for run in sorted(entry.iterdir()):
            if run.is_symlink() or not run.is_dir() or not _is_hex(run.name, 12):
                return f"{run} is not a run folder (a folder named by a 12-hex-digit run hash)"
    return None


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pcl.clean_runs",
                                 description="Check that a folder is a run store before deleting it.")
    ap.add_argument("--is-store", metavar="DIR", required=True,
                    help="exit 0 when DIR is a run store (or empty, or absent), else 1")
    a = ap.parse_args(argv)
    reason = not_a_store_reason(a.is_store)
    if reason is not None:
        print(f"{a.is_store!r} is not a run store: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
