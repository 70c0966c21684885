"""Multi-scale backbones for detection and segmentation from any mimkit image encoder: four maps at strides 4, 8,
16 and 32, for an FPN (Mask R-CNN) or UperNet.

* ConvViT (ConvMAE, MR-MCMAE, LocalMIM). ``detect``: MCMAE Sec. 2.3's variant, E1..E4 with stage 3 in shifted 7x7
  windows but for 4 global blocks. ``segment``: the plain encoder, global stage 3 (MCMAE Sec. 2.3).
* Swin (MixMAE, LocalMIM). Both tasks: MixMAE App. A.1's 16x16 windows, 32x32 in 3 stage-3 blocks, bias tables
  resized (MixMAE Sec. 4 uses them for ADE20K too); the four stage outputs.
* ViT (MAE, MR-MAE, LocalMIM, MixMAE). ``detect``: ViTDet, 14x14 windows but for 4 global blocks, no class token,
  the last block through the simple feature pyramid. ``segment``: MAE's ADE20K setup (BEiT's), global attention,
  4 evenly spaced blocks (2, 5, 8, 11 of 12; BEiT taps 3, 5, 7, 11) rescaled by deconv x4, deconv x2, identity and
  max-pool.

``window`` (tokens) and ``global_blocks`` (0-based, in the attention stage: ConvViT's and Swin's stage 3, all of a
ViT's blocks) replace the paper defaults; for ``segment`` they also put ConvViT and ViT into windows. The defaults
scale to the encoder's depth (:func:`mimkit.backbones.window_attention.scaled_blocks`).

Every parameter of a backbone trains and is reached by its forward (DDP without ``find_unused_parameters``): the
ViT's class token is left out of the backbone; the Swin and ViT final norms normalize the last stage's map (as in
pretraining, where they follow the last block); ConvViT's E3 is its last block's raw output (MCMAE), so its final
norm is frozen (``requires_grad_(False)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from mimkit.backbones.convvit import ConvViTEncoder
from mimkit.backbones.convvit_detection import WINDOW as CONVVIT_WINDOW
from mimkit.backbones.convvit_detection import ConvViTDetectionEncoder
from mimkit.backbones.swin import SwinEncoder
from mimkit.backbones.swin_detection import WINDOW as SWIN_WINDOW
from mimkit.backbones.swin_detection import swin_with_dense_windows
from mimkit.backbones.video_convvit import VideoConvViTEncoder
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.backbones.vit_detection import WINDOW as VIT_WINDOW
from mimkit.backbones.vit_detection import ViTDetectionEncoder
from mimkit.backbones.window_attention import evenly_spaced
from mimkit.errors import MimkitError
from mimkit.eval.classifier import ENCODER_PREFIX
from mimkit.heads.simple_pyramid import SimpleFeaturePyramid

Task = Literal["detect", "segment"]
TASKS = ("detect", "segment")
STRIDES = (4, 8, 16, 32)


class DenseBackbone(nn.Module):
    """``forward(images)`` gives four maps at :data:`STRIDES` with :attr:`out_channels` channels. The encoder's
    dense variant is ``encoder``; parts added around it (a pyramid) are named otherwise and come last in
    :meth:`layer_ordinal`."""

    def __init__(self, encoder: nn.Module, out_channels: Sequence[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_channels = tuple(out_channels)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images`` ``(B, C, H, W)`` with H and W multiples of 32 -> maps ``(B, C_i, H/s, W/s)`` for s = 4..32."""
        height, width = images.shape[-2:]
        if height % STRIDES[-1] or width % STRIDES[-1]:
            raise ValueError(f"dense backbones need image sides that are multiples of 32, got {height}x{width}")
        return self.maps(images)

    def maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def layer_ordinal(self, name: str) -> tuple[float, ...]:
        """Layer of a parameter for layer-wise lr decay: the encoder's own rule, added parts last."""
        if name.startswith(ENCODER_PREFIX):
            return self.encoder.layer_ordinal(name[len(ENCODER_PREFIX) :])
        return (math.inf,)


class ConvViTBackbone(DenseBackbone):
    """E1..E4 of a ConvViT encoder (plain or detection variant)."""

    def __init__(self, encoder: ConvViTEncoder) -> None:
        c1, c2, c3 = encoder.embed_dims
        super().__init__(encoder, (c1, c2, c3, c3))
        encoder.norm.requires_grad_(False)

    def maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.feature_maps(images)


class SwinBackbone(DenseBackbone):
    """The four stage outputs of a Swin encoder, the last one through its final norm."""

    def __init__(self, encoder: SwinEncoder) -> None:
        super().__init__(encoder, encoder.embed_dims)

    def maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        normed, stage_maps = self.encoder.encode(self.encoder.embed(images))
        last = stage_maps[-1]
        return [*stage_maps[:-1], normed.transpose(1, 2).reshape(last.shape)]


class ViTBackbone(DenseBackbone):
    """A plain ViT's 1/16 maps rescaled to 1/4..1/32 by the simple feature pyramid: the last block's map alone
    (ViTDet), or one block per level (``taps``, BEiT/MAE segmentation: deconv x4, deconv x2, identity, max-pool)."""

    def __init__(self, encoder: ViTDetectionEncoder, taps: Sequence[int]) -> None:
        if len(taps) not in (1, len(STRIDES)):
            raise ValueError(f"a ViT backbone taps one block or one per level, got {list(taps)}")
        pyramid = SimpleFeaturePyramid(encoder.embed_dim)
        super().__init__(encoder, pyramid.channels)
        self.taps = tuple(taps)
        self.pyramid = pyramid
        if max(self.taps) < len(encoder.blocks) - 1:
            # Blocks after the last tap would run for nothing and get no gradient (DDP refuses that); the final
            # norm belongs after the last block, so it goes with them.
            encoder.blocks = encoder.blocks[: max(self.taps) + 1]
            encoder.norm = nn.Identity()

    def maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        blocks = self.encoder(images, self.taps)
        if len(blocks) == 1:
            return self.pyramid(blocks[0])
        quarter, eighth, sixteenth, thirty_second = blocks
        pyramid = self.pyramid
        return [
            pyramid.to_quarter(quarter),
            pyramid.to_eighth(eighth),
            sixteenth,
            pyramid.to_thirty_second(thirty_second),
        ]


def build_dense_backbone(
    encoder: nn.Module,
    task: Task,
    window: int | None = None,
    global_blocks: Sequence[int] | None = None,
    feature_blocks: Sequence[int] | None = None,
) -> DenseBackbone:
    """The dense backbone of a (pretrained) mimkit ``encoder`` for ``task`` (list in the module docstring).

    ``feature_blocks``: for a plain ViT, the blocks whose outputs become the 1/4, 1/8, 1/16 and 1/32 maps (one
    block for the simple feature pyramid, or four); None: the last block for ``detect``, four evenly spaced blocks
    for ``segment``. Other encoders have their own stages and refuse it.

    The backbone keeps the encoder's weights; it takes over the encoder's modules (ViT, plain ConvViT) or copies
    them (ConvViT detection variant, Swin), so use the returned module from here on.
    """
    if task not in TASKS:
        raise MimkitError(f"dense task must be one of {', '.join(TASKS)}, got '{task}'")
    windowed = task == "detect" or window is not None or global_blocks is not None
    if isinstance(encoder, VideoConvViTEncoder):
        raise MimkitError("video encoders have no detection or segmentation backbone: use an image model")
    if feature_blocks is not None and not isinstance(encoder, VisionTransformerEncoder):
        raise MimkitError(
            f"model.feature_blocks chooses a plain ViT's blocks; a {type(encoder).__name__} has its own stages: "
            "leave it out"
        )
    if isinstance(encoder, ConvViTEncoder):
        if windowed:
            encoder = ConvViTDetectionEncoder.from_encoder(
                encoder, window=CONVVIT_WINDOW if window is None else window, global_blocks=global_blocks
            )
        return ConvViTBackbone(encoder)
    if isinstance(encoder, SwinEncoder):
        return SwinBackbone(swin_with_dense_windows(encoder, SWIN_WINDOW if window is None else window, global_blocks))
    if isinstance(encoder, VisionTransformerEncoder):
        depth = len(encoder.blocks)
        if not windowed:
            global_blocks = range(depth)
        dense = ViTDetectionEncoder(encoder, VIT_WINDOW if window is None else window, global_blocks)
        taps = (depth - 1,) if task == "detect" else evenly_spaced(depth, len(STRIDES), from_first=False)
        return ViTBackbone(dense, taps if feature_blocks is None else checked_taps(feature_blocks, depth))
    raise MimkitError(
        f"no dense backbone for a {type(encoder).__name__}: detection and segmentation take a ConvViT, Swin or ViT "
        "encoder (convmae_*, mixmae_*, mae_*, mrmae_*, localmim_* models)"
    )


def checked_taps(blocks: Sequence[int], depth: int) -> tuple[int, ...]:
    """``model.feature_blocks``: one or four 0-based blocks of a ``depth``-block ViT, in increasing order."""
    taps = tuple(blocks)
    if len(taps) not in (1, len(STRIDES)) or list(taps) != sorted(set(taps)) or not all(0 <= b < depth for b in taps):
        raise MimkitError(
            f"model.feature_blocks {list(taps)} must be 1 or {len(STRIDES)} increasing block indices below the ViT's "
            f"depth {depth}"
        )
    return taps
