"""tanet: video super-resolution that learns temporal dynamics.

Implements Liu et al., "Robust Video Super-Resolution with Learned Temporal Dynamics"
(ICCV 2017): N SR branches over 1, 3, ..., 2N-1 frames mixed per pixel by a temporal
modulation branch, with rectified-optical-flow or learned spatial alignment.

The package is a plain library: it never imports Prefect. Heavy optional tools (MLflow)
are imported lazily inside the functions that need them, so training also runs as a plain
module on machines that only have torch, numpy, pyarrow, opencv and safetensors.
"""

__version__ = "0.1.0"
