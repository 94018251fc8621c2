"""pcl: magnitude pruning vs contrastive learning (Corti et al. 2022), reproduced.

Modules, one job each: ``config`` (run configs and presets), ``methods`` and ``schedules`` (the
registries of learning methods and pruning schedules), ``data``, ``augment``, ``models``,
``losses``, ``pruning``, ``train`` (the loop and ``train_run``), ``store`` (the run store),
``lease`` (one trainer per run), ``executors`` (local processes, submitit, SLURM), ``study``
(plans and ``run_all``), ``evaluate`` (runs -> tidy tables), ``metrics`` (pure functions),
``intervals`` (seed-noise intervals), ``claims`` (T1), ``gallery`` (F9's selection rules),
``plots`` (F1-F9), ``summaries`` (the generated notebook summaries), ``reproduce`` (the papermill
chain).
"""
__version__ = "0.2.0"
