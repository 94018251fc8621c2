"""pcl: magnitude pruning vs contrastive learning (Corti et al. 2022), reproduced.

Modules, one job each: ``config`` (run configs and presets), ``data``, ``augment``, ``models``,
``losses``, ``pruning``, ``train`` (the loop and ``train_run``), ``store`` (the run store),
``study`` (plans and parallel runs), ``evaluate`` (runs -> tidy tables), ``metrics`` (pure
functions), ``claims`` (T1), ``plots`` (F1-F8), ``reproduce`` (the papermill chain).
"""
__version__ = "0.1.0"
