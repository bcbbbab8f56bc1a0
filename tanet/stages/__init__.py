"""One module per stage of ``dvc.yaml``, named as the stage, each exposing ``run_<stage>``.

``flows/`` wraps these in Prefect flows; ``dvc.yaml`` decides when they run. The stages
receive the one validated :class:`tanet.config.Params`.
"""
