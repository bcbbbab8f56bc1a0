"""Training data: where clips come from (sources), the streaming patch loader and the
full-frame validation set.
"""
