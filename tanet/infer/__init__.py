"""Inference: the whole-frame upscaler, the video pipeline (``tanet upscale``), evaluation
methods and scores, the MLflow pyfunc, ONNX export and the shipped models.
"""
