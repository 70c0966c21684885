"""The teacher a mimic loss reads: which network, from which local weights file, at which input size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mimkit.config_schema import Settings
from mimkit.config_types import Count, Finite, Positive

TeacherKind = Literal["timm_vit", "torchvision_cnn", "mimkit"]


@dataclass
class TeacherConfig(Settings):
    """A frozen teacher, set in a model config (``model.args.teacher`` in YAML, ``teacher=`` in ``create_model``).

    kind: ``timm_vit`` (any timm ViT, e.g. the CLIP or DINO ViT-B/16 image towers), ``torchvision_cnn`` (a
        torchvision classifier whose feature map is resampled to the student's grid, e.g. MobileNetV2) or
        ``mimkit`` (the encoder of a mimkit pretraining checkpoint).
    name: the timm model name (``vit_base_patch16_clip_224.openai``, ``vit_base_patch16_224.dino``) or the
        torchvision builder name (``mobilenet_v2``); unused for ``mimkit``.
    weights: path of the local weights file (safetensors, or a ``.pth`` state dict read with
        ``weights_only=True``; a mimkit checkpoint for ``mimkit``). Nothing is downloaded.
    model_args: extra keyword arguments of the timm / torchvision builder (e.g. a small test architecture).
    layer: the torchvision graph node whose output is the feature map (``torchvision_cnn`` only).
    img_size: the teacher's input side; ``None`` = its own (timm's pretrained config, 224 for torchvision, the
        training crop of a mimkit checkpoint). The student's crop is resized to it.
    mean, std: the teacher's input normalization; ``None`` = its own (timm's pretrained config, ImageNet for
        torchvision, the data section of a mimkit checkpoint's run).
    bf16: run the teacher under bfloat16 autocast (its features are returned in float32).
    """

    kind: TeacherKind = "timm_vit"
    name: str = "vit_base_patch16_clip_224.openai"
    weights: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    layer: str = "features"
    img_size: Count | None = None
    mean: list[Finite] | None = None
    std: list[Positive] | None = None
    bf16: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together (or both left null for the teacher's own)")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need the same number of values, got {len(self.mean)} and {len(self.std)}")
