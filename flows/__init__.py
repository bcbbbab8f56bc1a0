"""Prefect flows: thin orchestration over the ``tanet`` library.

``python -m flows.stage <stage> ...`` runs one ``dvc.yaml`` stage (``run_<stage>`` of
``tanet/stages/<stage>.py``) as a flow named as the stage, its fan-out items as tasks.
``flows/train_tanet.py`` holds the deployments of ``prefect.yaml``: the whole pipeline
(``dvc repro``), adding videos, re-evaluating. DVC decides what is stale; Prefect runs it
(tasks never cache). Without ``PREFECT_API_URL`` a stage starts a temporary server.
"""
