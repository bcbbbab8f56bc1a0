"""Pure operators on frames and flows, no files or models: colour, resize and degradation,
metrics, optical flow and rectified optical flow (ROF) alignment.

Layer 1 of the library (see the README's layout map): nothing here imports another
``tanet`` package except ``tanet.errors``.
"""
