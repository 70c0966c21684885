"""Loading the authors' released checkpoints: safe reading and key mappings onto mimkit's modules."""

from mimkit.official.checkpoint import read_official_checkpoint
from mimkit.official.mae import convert_mae_state_dict, load_mae_weights, mae_config_from_official

__all__ = [
    "convert_mae_state_dict",
    "load_mae_weights",
    "mae_config_from_official",
    "read_official_checkpoint",
]
