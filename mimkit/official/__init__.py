"""Loading the authors' released checkpoints: safe reading and key mappings onto mimkit's modules."""

from mimkit.official.checkpoint import read_official_checkpoint
from mimkit.official.convmae import convert_convmae_state_dict, convmae_config_from_official, load_convmae_weights
from mimkit.official.localmim import (
    convert_localmim_state_dict,
    load_localmim_weights,
    localmim_config_from_official,
)
from mimkit.official.mae import convert_mae_state_dict, load_mae_weights, mae_config_from_official
from mimkit.official.mixmim import convert_mixmim_state_dict, load_mixmim_weights, mixmae_config_from_official

__all__ = [
    "convert_convmae_state_dict",
    "convert_localmim_state_dict",
    "convert_mae_state_dict",
    "convert_mixmim_state_dict",
    "convmae_config_from_official",
    "load_convmae_weights",
    "load_localmim_weights",
    "load_mae_weights",
    "load_mixmim_weights",
    "localmim_config_from_official",
    "mae_config_from_official",
    "mixmae_config_from_official",
    "read_official_checkpoint",
]
