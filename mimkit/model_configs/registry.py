"""Named model configurations: ``model_config(name, **overrides)`` and ``list_models()``, without importing torch.

A name maps to the import path of a method class and its paper configuration; :func:`mimkit.models.create_model`
builds it. Overrides change any field of that configuration, with errors that name the field.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import asdict
from typing import Any

from mimkit.config_schema import ConfigError, from_dict, merged_sections, to_dict
from mimkit.model_configs.convmae import ConvMAEConfig
from mimkit.model_configs.localmim import LocalMIMConvViTConfig, LocalMIMSwinConfig, LocalMIMViTConfig
from mimkit.model_configs.mae import MAEConfig
from mimkit.model_configs.mixmae import MixMAEConfig, MixMAEViTConfig
from mimkit.model_configs.mrmae import MRMAEConfig, MRMCMAEConfig
from mimkit.model_configs.teacher import TeacherConfig
from mimkit.model_configs.videoconvmae import VideoConvMAEConfig

_REGISTRY: dict[str, tuple[Any, Any]] = {}

MAE = "mimkit.methods.mae:MAE"
CONVMAE = "mimkit.methods.convmae:ConvMAE"
MIXMAE = "mimkit.methods.mixmae:MixMAE"
MIXMAE_VIT = "mimkit.methods.mixmae:MixMAEViT"
LOCALMIM = "mimkit.methods.localmim:LocalMIM"
MRMAE = "mimkit.methods.mrmae:MRMAE"
MRMCMAE = "mimkit.methods.mrmae:MRMCMAE"
VIDEOCONVMAE = "mimkit.methods.videoconvmae:VideoConvMAE"
"""Import paths of the method classes, imported when a model is built."""


def register_model(name: str, model_class: Any, config: Any) -> None:
    """Add a named configuration; ``model_class`` is a class or its ``"module:Class"`` import path, and
    ``model_class(config)`` builds the model."""
    if name in _REGISTRY:
        raise ValueError(f"model name '{name}' is already registered")
    _REGISTRY[name] = (model_class, config)


def list_models(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`mimkit.create_model` that match the shell-style ``pattern`` (``*``, ``?``,
    ``[...]``; e.g. ``'mae_*'``, ``'*_tiny*'``), sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern))


def model_config(name: str, prefix: str = "model", **overrides: Any) -> Any:
    """The configuration dataclass of ``name`` with ``overrides`` applied and validated; errors name the fields
    as ``prefix.field``."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(list_models())}")
    _, base = _REGISTRY[name]
    return from_dict(type(base), merged_sections(to_dict(base), to_dict(overrides)), prefix=prefix)


def model_class(name: str) -> type:
    """The class that builds model ``name`` (imported on first use)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(list_models())}")
    target, _ = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attribute = target.partition(":")
        target = getattr(importlib.import_module(module), attribute)
    return target


# MAE paper sizes (Table/Sec. 4 and appendix A.1): ViT-S/B/L at patch 16 and ViT-H at patch 14, each with the
# 8-block 512-wide decoder. The tiny one (ViT-Ti width, shallow decoder) is for CPU work and tests.
register_model(
    "mae_vit_tiny_patch16",
    MAE,
    MAEConfig(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
)
register_model("mae_vit_small_patch16", MAE, MAEConfig(embed_dim=384, depth=12, num_heads=6))
register_model("mae_vit_base_patch16", MAE, MAEConfig(embed_dim=768, depth=12, num_heads=12))
register_model("mae_vit_large_patch16", MAE, MAEConfig(embed_dim=1024, depth=24, num_heads=16))
register_model("mae_vit_huge_patch14", MAE, MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16))


# ConvMAE / MCMAE sizes of Table 7 (stage widths, depths, stage-3 heads, MLP ratios per stage), each with the
# 8-block 512-wide decoder. The authors' decoder takes the stage-1 MLP ratio, so B*, L and H get 8x decoder
# MLPs too. The tiny one is for CPU work and tests.
register_model(
    "convmae_tiny",
    CONVMAE,
    ConvMAEConfig(
        embed_dims=(32, 64, 128),
        depths=(1, 1, 4),
        num_heads=4,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
    ),
)
register_model("convmae_small", CONVMAE, ConvMAEConfig(embed_dims=(128, 256, 384), num_heads=6))
register_model("convmae_base", CONVMAE, ConvMAEConfig())
register_model("convmae_base_star", CONVMAE, ConvMAEConfig(mlp_ratios=(8.0, 8.0, 4.0)))
register_model(
    "convmae_large",
    CONVMAE,
    ConvMAEConfig(embed_dims=(384, 768, 1024), depths=(2, 2, 23), num_heads=16, mlp_ratios=(8.0, 8.0, 4.0)),
)
register_model(
    "convmae_huge",
    CONVMAE,
    ConvMAEConfig(embed_dims=(768, 1024, 1280), depths=(2, 2, 31), num_heads=16, mlp_ratios=(8.0, 8.0, 4.0)),
)


# MixMAE sizes of Sec. 3.2: Swin with 14x14 windows in stages 1-3 and 7x7 in stage 4 (global at 224 px), widths
# C*(1, 2, 4, 8), each with the 8-block 512-wide decoder. The tiny one (8x8 windows, global from stage 3 at
# 128 px) is for CPU work and tests.
register_model(
    "mixmae_swin_tiny",
    MIXMAE,
    MixMAEConfig(
        embed_dim=32,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
        window_sizes=(8, 8, 8, 4),
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
    ),
)
register_model("mixmae_swin_base_w14", MIXMAE, MixMAEConfig())
register_model("mixmae_swin_large_w14", MIXMAE, MixMAEConfig(embed_dim=192, num_heads=(6, 12, 24, 48)))
register_model("mixmae_swin_huge_w14", MIXMAE, MixMAEConfig(embed_dim=352, num_heads=(11, 22, 44, 88)))


# MixMAE on the plain ViT (appendix Table 17): MAE's ViT-B/16 and 8-block 512-wide decoder, 16-px mixing regions.
# The tiny one is for CPU work and tests.
register_model(
    "mixmae_vit_tiny_patch16",
    MIXMAE_VIT,
    MixMAEViTConfig(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
)
register_model("mixmae_vit_base_patch16", MIXMAE_VIT, MixMAEViTConfig())


# LocalMIM (Sec. 4.1, appendix C): ViT taps blocks [2, 4, 4+n, 6+n] (1-based) with HOG targets of 4/8/16/32 px
# regions and 18 orientation bins, decoders of one 256-wide block with 8 heads; hierarchical encoders tap every
# stage with 128-wide, 4-head decoders and targets at the stage's own scale. The tiny ones are for CPU work.
register_model(
    "localmim_vit_tiny",
    LOCALMIM,
    LocalMIMViTConfig(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128, decoder_num_heads=4),
)
register_model("localmim_vit_small", LOCALMIM, LocalMIMViTConfig(embed_dim=384, depth=12, num_heads=6))
register_model("localmim_vit_base", LOCALMIM, LocalMIMViTConfig())
register_model("localmim_vit_large", LOCALMIM, LocalMIMViTConfig(embed_dim=1024, depth=24, num_heads=16))
register_model(
    "localmim_convvit_tiny",
    LOCALMIM,
    LocalMIMConvViTConfig(embed_dims=(32, 64, 128), depths=(1, 1, 4), num_heads=4, decoder_embed_dim=64),
)
register_model("localmim_convvit_base", LOCALMIM, LocalMIMConvViTConfig())
register_model(
    "localmim_swin_tiny",
    LOCALMIM,
    LocalMIMSwinConfig(
        embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_sizes=(8, 8, 8, 4), decoder_embed_dim=64
    ),
)
register_model("localmim_swin_base", LOCALMIM, LocalMIMSwinConfig())

# MR-MAE (paper 003): MAE's ViT-B/16 with its 8-block 512-wide decoder, mask ratio 0.75, mimicking the CLIP
# ViT-B/16 image tower (Sec. 4.1 default teacher) on the student's 14x14 grid; loss 0.5 L_M + 0.5 L_R. The teacher
# weights file is a path the user sets (model.args.teacher.weights). `mrmae_vit_base` is Table 3's second row
# (no tricks); the mrmae/ recipes turn the tricks on. The tiny one is for CPU work and tests.
CLIP_B16 = TeacherConfig(kind="timm_vit", name="vit_base_patch16_clip_224.openai")
register_model(
    "mrmae_vit_tiny",
    MRMAE,
    MRMAEConfig(
        embed_dim=192,
        depth=12,
        num_heads=3,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
        teacher=CLIP_B16,
    ),
)
register_model("mrmae_vit_base", MRMAE, MRMAEConfig(teacher=CLIP_B16))

# MR-MCMAE (Sec. 3.3; Table 4 sizes, which are ConvMAE's): ConvViT encoder, block-wise masking, multi-scale decoder
# input, focused mimicking and multi-layer fusion of evenly spaced stage-3 blocks ending at the last (our choice;
# the paper does not list them). The tiny one is for CPU work and tests.
for _size, _fusion_layers in (
    ("tiny", (1, 3)),
    ("small", (2, 6, 10)),
    ("base", (2, 6, 10)),
    ("large", (6, 14, 22)),
    ("huge", (6, 14, 22, 30)),
):
    register_model(
        f"mrmcmae_{_size}",
        MRMCMAE,
        MRMCMAEConfig(
            **asdict(model_config(f"convmae_{_size}")),
            teacher=CLIP_B16,
            focused_mimicking=True,
            fusion_layers=_fusion_layers,
        ),
    )

# VideoConvMAE (Sec. 2.4, 3.4): ConvMAE-B's encoder (widths 256/384/768, depths 2/2/11) on 16-frame 224 px clips with
# 2x16x16 cubes, tube masking 0.9 and VideoMAE-B's decoder (4 blocks, 384 wide, 6 heads): 96,844,160 trainable
# parameters, 84,531,584 of them the encoder (measured; the paper gives none). The tiny one is for CPU work and tests.
register_model(
    "videoconvmae_tiny",
    VIDEOCONVMAE,
    VideoConvMAEConfig(
        embed_dims=(32, 64, 128),
        depths=(1, 1, 4),
        num_heads=4,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
    ),
)
register_model("videoconvmae_base", VIDEOCONVMAE, VideoConvMAEConfig())
