"""Model components, one file each (see each file's docstring for the paper section)."""

from tanet.models.branch import BranchConfig, SRBranch, SubPixelNet
from tanet.models.modulation import TemporalModulationBranch
from tanet.models.san import SANConfig, SpatialAlignmentNetwork, translation_to_affine, warp
from tanet.models.temporal_adaptive import TANetConfig, TANetOutput, TemporalAdaptiveNetwork
from tanet.models.vsr import MODEL_PRESETS, ModelConfig, VSRNet, VSROutput, tanet_l, tanet_s

__all__ = [
    "BranchConfig",
    "MODEL_PRESETS",
    "ModelConfig",
    "SANConfig",
    "SRBranch",
    "SpatialAlignmentNetwork",
    "SubPixelNet",
    "TANetConfig",
    "TANetOutput",
    "TemporalAdaptiveNetwork",
    "TemporalModulationBranch",
    "VSRNet",
    "VSROutput",
    "tanet_l",
    "tanet_s",
    "translation_to_affine",
    "warp",
]
