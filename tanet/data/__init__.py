"""The data side of the pipeline: sources, ingestion, LR sets, flows, patch shards, loader.

Each stage is a plain function over paths and a typed params section; ``flows/`` wraps
them in Prefect tasks and ``dvc.yaml`` decides when they run.
"""
