"""Files: video probe/reader/writer, frame folders, the data stages' on-disk layout (clip
manifest, LR sets, flows, patch shards), model folders, and the one atomic-output mechanism.
"""
