"""pcl: magnitude pruning vs contrastive learning (Corti et al. 2022), reproduced.

The modules and their layers: docs/ARCHITECTURE.md.
"""
__version__ = "0.2.0"

from . import methods, schedules  # noqa: E402,F401  (fill the registries)
