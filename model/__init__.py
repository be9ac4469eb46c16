"""The PyTorch VeloxSeg architecture, its named configs, and checkpoint loading."""

from veloxseg.model.checkpoint import load_checkpoint, read_state_dict
from veloxseg.model.configs import CONFIG_NAMES, get_config, resolve_config
from veloxseg.model.network import TrainOutput, VeloxSeg, gram_matrix
from veloxseg.model.seeded import seeded_state_dict

__all__ = [
    "CONFIG_NAMES",
    "TrainOutput",
    "VeloxSeg",
    "get_config",
    "gram_matrix",
    "load_checkpoint",
    "read_state_dict",
    "resolve_config",
    "seeded_state_dict",
]
