"""Experiment tracking (MLflow runs, imported runs) and the local Prefect + MLflow services."""
