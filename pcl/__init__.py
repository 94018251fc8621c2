"""pcl: magnitude pruning vs contrastive learning (Corti et al. 2022), reproduced.

Modules, one job each, bottom layer first (``docs/ARCHITECTURE.md``): ``keys`` (population keys),
``registry`` (the registry class), ``config`` (run configs and presets); ``data``, ``augment``,
``models``, ``losses``, ``pruning``; ``methods`` and ``schedules`` (the registries' entries);
``provenance``, ``store``, ``lease``, ``train``, ``executors``, ``study``; ``knn``, ``metrics``,
``evaluate``; ``intervals``, ``claim_stats``, ``claims``, ``plots``, ``gallery``, ``reports``,
``reproduce``, ``check_study``.
"""
__version__ = "0.2.0"

from . import methods, schedules  # noqa: E402,F401  (fill the registries)
