"""Training: one job's loop (loss, optimiser, schedule), augmentation, validation,
checkpoints, DDP set-up and curves. ``python -m tanet.train`` runs the schedule without
Prefect, DVC or MLflow (the GPU route; see :mod:`tanet.train.cli`).
"""
