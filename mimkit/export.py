"""mimkit encoders as timm models, and export of a pretrained encoder to a file timm loads.

``import mimkit`` registers ``mimkit_vit_*``, ``mimkit_convvit_*`` and ``mimkit_swin_*`` in timm's registry. A file
written by :func:`export_encoder` then loads with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))``, as a classifier
(``num_classes=N``: pooled features, the encoder's pooling norm, a new linear head) or as a multi-scale backbone
(``features_only=True``: the encoder's ``feature_maps`` through timm's ``forward_intermediates`` interface).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from mimkit.backbones.convvit import ConvViTEncoder
from mimkit.backbones.swin import SwinEncoder
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.config_schema import to_dict
from mimkit.engine.atomic_files import atomic_write
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.checkpoint_checks import load_model_state
from mimkit.errors import MimkitError
from mimkit.eval.checkpoint_record import recorded_model
from mimkit.eval.loading import encoder_weights
from mimkit.models import create_encoder, encoder_class, model_config
from mimkit.output_guard import check_output

TIMM_NAMES = {
    "mimkit_vit_tiny_patch16": "mae_vit_tiny_patch16",
    "mimkit_vit_small_patch16": "mae_vit_small_patch16",
    "mimkit_vit_base_patch16": "mae_vit_base_patch16",
    "mimkit_vit_large_patch16": "mae_vit_large_patch16",
    "mimkit_vit_huge_patch14": "mae_vit_huge_patch14",
    "mimkit_convvit_tiny": "convmae_tiny",
    "mimkit_convvit_small": "convmae_small",
    "mimkit_convvit_base": "convmae_base",
    "mimkit_convvit_base_star": "convmae_base_star",
    "mimkit_convvit_large": "convmae_large",
    "mimkit_convvit_huge": "convmae_huge",
    "mimkit_swin_tiny": "mixmae_swin_tiny",
    "mimkit_swin_base_w14": "mixmae_swin_base_w14",
    "mimkit_swin_large_w14": "mixmae_swin_large_w14",
    "mimkit_swin_huge_w14": "mixmae_swin_huge_w14",
}
"""timm name -> the mimkit pretraining model whose encoder it is (every method with that encoder exports to it)."""

ENCODER_FIELDS = {
    "mimkit_vit": ("in_chans", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "norm_eps"),
    "mimkit_convvit": (
        "in_chans",
        "img_size",
        "embed_dims",
        "depths",
        "num_heads",
        "mlp_ratios",
        "kernel_size",
        "norm_eps",
    ),
    "mimkit_swin": ("in_chans", "img_size", "embed_dim", "depths", "num_heads", "window_sizes", "mlp_ratio"),
}
"""The configuration fields that shape each encoder family (the rest only shape pretraining)."""

TIMM_FAMILIES = {VisionTransformerEncoder: "mimkit_vit", ConvViTEncoder: "mimkit_convvit", SwinEncoder: "mimkit_swin"}
"""The timm family that exports each encoder class (every method built on that encoder exports to it)."""


class TimmEncoder(nn.Module):
    """A mimkit encoder with timm's model interface: ``forward_features``, ``forward_head``,
    ``get_classifier``/``reset_classifier`` and ``forward_intermediates`` (for ``features_only``)."""

    def __init__(
        self,
        pretraining_model: str,
        num_classes: int = 0,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        **fields: Any,
    ) -> None:
        super().__init__()
        self.encoder = create_encoder(pretraining_model, in_chans=in_chans, drop_path_rate=drop_path_rate, **fields)
        self.num_features = self.head_hidden_size = self.encoder.num_features
        self.num_classes = num_classes
        self.fc_norm = nn.LayerNorm(self.num_features, eps=1e-6) if self.encoder.pool_with_norm else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.feature_info = self.encoder.feature_info

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features ``(B, num_features)`` (each encoder's fine-tuning pooling)."""
        return self.encoder.pooled_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder's ``feature_maps`` picked by ``indices`` (timm's convention: None = all, n = last n)."""
        if output_fmt != "NCHW":
            raise ValueError(f"mimkit encoders give NCHW feature maps, not {output_fmt}")
        maps = self.encoder.feature_maps(x)
        take, _ = feature_take_indices(len(maps), indices)
        intermediates = [maps[i] for i in take]
        return intermediates if intermediates_only else (self.forward_features(x), intermediates)


def _default_cfg(pretraining_model: str) -> dict:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "classifier": "head",
        "first_conv": "encoder.patch_embed.proj" if "convmae" not in pretraining_model else "encoder.patch_embed1.proj",
        "architecture": pretraining_model,
    }


def _num_feature_maps(pretraining_model: str, kwargs: dict[str, Any]) -> int:
    """Hierarchical encoders give four scales; a plain ViT gives one map per block."""
    if encoder_class(pretraining_model) is VisionTransformerEncoder:
        return kwargs.get("depth", model_config(pretraining_model).depth)
    return 4


default_cfgs = generate_default_cfgs({name: _default_cfg(model) for name, model in TIMM_NAMES.items()})
"""timm reads this module attribute when :func:`_register` registers each name."""


def _register(timm_name: str, pretraining_model: str) -> None:
    def factory(pretrained: bool = False, **kwargs: Any) -> TimmEncoder:
        return build_model_with_cfg(
            TimmEncoder,
            timm_name,
            pretrained,
            feature_cfg={
                "feature_cls": "getter",
                "out_indices": tuple(range(_num_feature_maps(pretraining_model, kwargs))),
            },
            pretraining_model=pretraining_model,
            **kwargs,
        )

    factory.__name__ = timm_name
    factory.__module__ = __name__
    register_model(factory)


for _timm_name, _pretraining_model in TIMM_NAMES.items():
    _register(_timm_name, _pretraining_model)


def _plain(value: Any) -> Any:
    """A configuration value as JSON sees it (tuples become lists), so stored and default values compare."""
    return json.loads(json.dumps(value))


def timm_model_for(pretraining_model: str, resolved: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registered timm name closest to a pretraining model's encoder, and the encoder fields that differ
    from that name's defaults (to pass to ``timm.create_model``)."""
    encoder = encoder_class(pretraining_model)
    if encoder not in TIMM_FAMILIES:
        raise MimkitError(
            f"'{pretraining_model}' has a {encoder.__name__}, which has no timm export (timm models take images)"
        )
    family = TIMM_FAMILIES[encoder]
    candidates = []
    for timm_name, model in TIMM_NAMES.items():
        if timm_name.startswith(family + "_"):
            defaults = _plain(to_dict(model_config(model)))
            fields = {k: resolved[k] for k in ENCODER_FIELDS[family] if k in resolved and resolved[k] != defaults[k]}
            candidates.append((len(fields), timm_name, fields))
    _, timm_name, fields = min(candidates)
    return timm_name, fields


def export_encoder(checkpoint: str | Path, output: str | Path) -> tuple[Path, str, dict]:
    """Write the encoder of a mimkit checkpoint (pretraining, or the ``encoder.*`` weights of a fine-tuned or
    probed classifier) as a safetensors file timm loads, atomically; never over the checkpoint or another one.

    Returns the file, the timm name to create it with, and the encoder fields that differ from that name's
    defaults (pass them as keyword arguments to ``timm.create_model``; they are also in the file's metadata).
    """
    output = check_output(output, [checkpoint])
    stored = load_checkpoint(checkpoint)
    name, resolved = recorded_model(stored.config, checkpoint)
    timm_name, fields = timm_model_for(name, _plain(resolved))
    wrapper = TimmEncoder(TIMM_NAMES[timm_name], **fields)
    load_model_state(wrapper.encoder, encoder_weights(stored.model, checkpoint), checkpoint)
    tensors = {k: v.detach().contiguous() for k, v in wrapper.state_dict().items()}
    metadata = {
        "timm_name": timm_name,
        "mimkit_model": name,
        "fields": json.dumps(fields),
        "resolved_model": json.dumps(resolved),  # what mimkit.create_encoder(pretrained=) rebuilds it from
    }
    atomic_write(output, save(tensors, metadata=metadata))
    return output, timm_name, fields
