"""Prefect flows: thin orchestration over the ``tanet`` library.

Each DVC stage's command runs one flow module (``python -m flows.<stage> ...``); the flow
maps plain ``tanet`` functions over clips, LR sets or branches as Prefect tasks. DVC decides
what is stale; Prefect runs it (tasks never cache). Without ``PREFECT_API_URL`` a flow runs
in Prefect's ephemeral mode; with it, every stage shows up as a flow run on the server.
"""
