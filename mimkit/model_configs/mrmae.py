"""MR-MAE's configurations ("Mimic before Reconstruct", paper 003): MAE's or ConvMAE's fields plus the mimic
options (see :mod:`mimkit.methods.mrmae` for what each option does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mimkit.config_schema import Settings
from mimkit.config_types import Finite, NonNegative, NonNegativeInt, Positive
from mimkit.model_configs.convmae import ConvMAEConfig
from mimkit.model_configs.mae import MAEConfig
from mimkit.model_configs.parts import IMAGENET_MEAN, IMAGENET_STD
from mimkit.model_configs.teacher import TeacherConfig

FocusRule = Literal["sample", "top"]

Variant = Literal["mimic_reconstruct", "low_level", "high_level", "both_at_decoder"]



@dataclass
class MimicOptions(Settings):
    """The mimic side of an MR-MAE model (see the module docstring for each option)."""

    teacher: TeacherConfig | None = field(default_factory=TeacherConfig)
    second_teacher: TeacherConfig | None = None
    variant: Variant = "mimic_reconstruct"
    mimic_weight: NonNegative = 0.5
    rec_weight: NonNegative = 0.5
    focused_mimicking: bool = False
    focus_rule: FocusRule = "sample"
    fusion_layers: tuple[NonNegativeInt, ...] = ()
    normalize_teacher_features: bool = True
    input_mean: tuple[Finite, ...] = IMAGENET_MEAN
    input_std: tuple[Positive, ...] = IMAGENET_STD

    def check_mimic_options(self, in_chans: int, depth: int) -> None:
        """Errors name the field; ``depth`` is the number of blocks ``fusion_layers`` may pick from."""
        if self.variant != "low_level" and self.teacher is None:
            raise ValueError(f"teacher is required for variant '{self.variant}' (only 'low_level' needs none)")
        if self.second_teacher is not None and self.teacher is None:
            raise ValueError("second_teacher needs a teacher")
        if self.focused_mimicking and self.variant == "low_level":
            raise ValueError("focused_mimicking needs a teacher's attention; variant 'low_level' loads none")
        bad = [i for i in self.fusion_layers if not 0 <= i < depth]
        if bad or len(set(self.fusion_layers)) != len(self.fusion_layers):
            raise ValueError(f"fusion_layers must be distinct block indices in [0, {depth}), got {self.fusion_layers}")
        if self.fusion_layers and depth - 1 not in self.fusion_layers:
            raise ValueError(f"fusion_layers must include the last block ({depth - 1}); later blocks would go unused")
        if len(self.input_mean) != in_chans or len(self.input_std) != in_chans:
            raise ValueError(f"input_mean and input_std need {in_chans} values each (in_chans={in_chans})")

    def teacher_fields(self) -> list[tuple[str, TeacherConfig]]:
        """The teachers this variant loads, with their config field names."""
        if self.variant == "low_level":
            return []
        named = [("teacher", self.teacher), ("second_teacher", self.second_teacher)]
        return [(name, config) for name, config in named if config is not None]


@dataclass
class MRMAEConfig(MimicOptions, MAEConfig):
    """MR-MAE on MAE's ViT: MAE's architecture fields plus :class:`MimicOptions`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_mimic_options(self.in_chans, self.depth)


@dataclass
class MRMCMAEConfig(MimicOptions, ConvMAEConfig):
    """MR-MCMAE on ConvMAE's ConvViT: ConvMAE's fields plus :class:`MimicOptions`; ``fusion_layers`` index the
    stage-3 blocks. Only ConvMAE's block-wise masked-convolution path applies."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("masked_conv", "skip_masked_regions"):
            if not getattr(self, name):
                raise ValueError(f"{name} must stay true: MR-MCMAE uses block-wise masked convolutions")
        if self.masking != "block":
            raise ValueError(
                f"masking must be 'block' for MR-MCMAE (multi-scale block-wise masking), got {self.masking!r}"
            )
        self.check_mimic_options(self.in_chans, self.depths[2])
