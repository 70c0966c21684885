"""mimkit encoders and fine-tuned classifiers as timm models, and their export to a file timm loads.

``import mimkit`` registers ``mimkit_vit_*``, ``mimkit_convvit_*`` and ``mimkit_swin_*`` in timm's registry. A file
written by :func:`export_encoder` then loads with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))``: the file records the encoder's
shape (its fields differing from the name's defaults, applied unless given as keyword arguments) and a
``pretrained_cfg`` with the input the weights were trained on (size, channels, normalization, evaluation crop) and,
from a fine-tuning checkpoint, the classifier (number and names of the classes; the head is in the file). The model
works as a classifier (``num_classes=N`` for a new head: pooled features, the encoder's pooling norm, a linear head)
or as a multi-scale backbone (``features_only=True``: the encoder's ``feature_maps`` through timm's
``forward_intermediates`` interface), and has timm's training hooks: ``set_grad_checkpointing``,
``no_weight_decay`` and ``group_matcher`` (for ``timm.optim.create_optimizer_v2(..., layer_decay=...)``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
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
from mimkit.engine.optim import TRANSFER_NO_WEIGHT_DECAY, no_weight_decay_names
from mimkit.engine.strategy import checkpoint_activations
from mimkit.errors import CheckpointError, MimkitError
from mimkit.eval.checkpoint_record import recorded_model
from mimkit.eval.classifier import encoder_group_matcher, freeze_skipped_norm
from mimkit.eval.classifier_checkpoint import classifier_from_checkpoint
from mimkit.eval.config import LabelledDataSection
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
    ``get_classifier``/``reset_classifier``, ``forward_intermediates`` (for ``features_only``) and the training
    hooks ``set_grad_checkpointing``, ``no_weight_decay`` and ``group_matcher``."""

    grad_checkpointing = False

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
        freeze_skipped_norm(self.encoder)
        self.num_features = self.head_hidden_size = self.encoder.num_features
        self.num_classes = num_classes
        self.fc_norm = nn.LayerNorm(self.num_features, eps=1e-6) if self.encoder.pool_with_norm else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.feature_info = self.encoder.feature_info

    def get_classifier(self) -> nn.Module:
        return self.head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder block's activations in the backward pass instead of keeping them (the blocks
        ``train.activation_checkpointing`` checkpoints); ``enable=False`` keeps them again."""
        checkpoint_activations(self.encoder, enable)
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """The parameters mimkit's fine-tuning exempts by name (:data:`~mimkit.engine.optim.TRANSFER_NO_WEIGHT_DECAY`;
        timm's optimizer factory reads this, and exempts norms and biases by its own rule for 1-D parameters)."""
        return no_weight_decay_names(self, TRANSFER_NO_WEIGHT_DECAY)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], tuple[float, ...]]:
        """Layers for layer-wise lr decay, as mimkit's fine-tuning takes them: the stem (patch embedding, class
        token) first, then every block in running order, the pooling norm and head last; ``coarse``: per stage for
        ConvViT and Swin (see :func:`mimkit.eval.classifier.encoder_group_matcher`)."""
        return encoder_group_matcher(self.encoder, coarse)

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


def exported_settings(file: str | Path) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """What a file written by :func:`export_encoder` records: its timm name, its encoder fields and its
    ``pretrained_cfg`` entries; ``None`` for any other file (timm reads those its own way)."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError):
        return None
    if "timm_name" not in metadata:
        return None
    try:
        fields, cfg = json.loads(metadata["fields"]), json.loads(metadata.get("pretrained_cfg", "{}"))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{file} is a malformed mimkit export ({err}); export it again") from err
    # JSON has no tuples; timm's data config keeps these as tuples
    return metadata["timm_name"], fields, {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def _with_exported_settings(timm_name: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` of ``timm.create_model`` completed from the export named by ``pretrained_cfg_overlay['file']``:
    its encoder fields and ``pretrained_cfg`` where the call does not set them."""
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    settings = exported_settings(overlay["file"]) if pretrained and overlay.get("file") else None
    if settings is None:
        return kwargs
    exported_name, fields, cfg = settings
    if exported_name != timm_name:
        raise MimkitError(
            f"{overlay['file']} holds a '{exported_name}' model, not '{timm_name}'; create it with "
            f"timm.create_model('{exported_name}', ...)"
        )
    return {**fields, **kwargs, "pretrained_cfg_overlay": {**cfg, **overlay}}


def _register(timm_name: str, pretraining_model: str) -> None:
    def factory(pretrained: bool = False, **kwargs: Any) -> TimmEncoder:
        kwargs = _with_exported_settings(timm_name, pretrained, kwargs)
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


def exported_input(record: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``pretrained_cfg`` entries that say what input a checkpoint's weights were trained on: size and
    channels, normalization and the evaluation crop (a fine-tuning run's ``data.eval_crop``; for pretraining and
    older runs the evaluation default)."""
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    missing = [f"data.{key}" for key in ("img_size", "in_chans", "mean", "std") if key not in data]
    if missing:
        raise CheckpointError(
            f"{path} records no {', '.join(missing)}, so the input its weights expect is unknown; export a "
            "checkpoint written by a mimkit run"
        )
    return {
        "input_size": (data["in_chans"], data["img_size"], data["img_size"]),
        "mean": tuple(data["mean"]),
        "std": tuple(data["std"]),
        "crop_pct": data.get("eval_crop", LabelledDataSection.eval_crop),
    }


@dataclass
class ExportedModel:
    path: Path
    timm_name: str
    fields: dict[str, Any]
    """The encoder fields that differ from ``timm_name``'s defaults (read back from the file by the timm model)."""
    pretrained_cfg: dict[str, Any]
    """What the file adds to the timm model's ``pretrained_cfg`` (see :func:`exported_input`), with
    ``num_classes`` and, where the checkpoint records them, ``label_names``."""
    head_left_out: str | None = None
    """Why a checkpoint's classifier head is not in the file (a linear probe's), else ``None``."""


def export_encoder(checkpoint: str | Path, output: str | Path) -> ExportedModel:
    """Write a mimkit checkpoint as a safetensors file timm loads, atomically; never over the checkpoint or another
    one. A fine-tuning checkpoint gives its whole classifier (encoder, pooling norm and head); a pretraining or
    linear-probe checkpoint its encoder (a probe's BatchNorm head has no place in timm's model).
    """
    output = check_output(output, [checkpoint])
    stored = load_checkpoint(checkpoint)
    name, resolved = recorded_model(stored.config, checkpoint)
    timm_name, fields = timm_model_for(name, _plain(resolved))
    cfg = {**exported_input(stored.config, checkpoint), "num_classes": 0}
    protocol = stored.config.get("protocol")
    if protocol == "finetune":
        classifier = classifier_from_checkpoint(stored, checkpoint)
        cfg["num_classes"] = classifier.num_classes
        if classifier.class_names:
            cfg["label_names"] = tuple(classifier.class_names)
        wrapper = TimmEncoder(TIMM_NAMES[timm_name], num_classes=classifier.num_classes, **fields)
        load_model_state(wrapper, classifier.model.state_dict(), checkpoint)
    else:
        wrapper = TimmEncoder(TIMM_NAMES[timm_name], **fields)
        load_model_state(wrapper.encoder, encoder_weights(stored.model, checkpoint), checkpoint)
    tensors = {k: v.detach().contiguous() for k, v in wrapper.state_dict().items()}
    metadata = {
        "timm_name": timm_name,
        "mimkit_model": name,
        "fields": json.dumps(fields),
        "pretrained_cfg": json.dumps(cfg),
        "resolved_model": json.dumps(resolved),  # what mimkit.create_encoder(pretrained=) rebuilds it from
    }
    atomic_write(output, save(tensors, metadata=metadata))
    left_out = "a linear probe's BatchNorm head has no place in timm's model" if protocol == "linprobe" else None
    return ExportedModel(output, timm_name, fields, cfg, left_out)
