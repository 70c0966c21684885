"""Mask R-CNN on a mimkit backbone, assembled from torchvision's detection parts.

The heads follow the setup the papers transfer with (Li et al., "Benchmarking detection transfer learning with
vision transformers", used by MCMAE Sec. 3.2 and MixMAE App. A.1): an FPN over the backbone's 1/4..1/32 maps
with an extra max-pooled level, a two-conv RPN head, a 4conv-1fc box head and a 4-conv mask head, the heads
normalized (GroupNorm here, which does not depend on how the batch is split over processes).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from mimkit.dense.group_norm import group_norm

BACKBONE_PREFIX = "net.backbone.body."
ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
"""One anchor size per FPN level (1/4 .. 1/64), three aspect ratios each: the FPN recipes' anchors."""
ASPECT_RATIOS = (0.5, 1.0, 2.0)
BOX_HEAD_WIDTH = 1024


class PyramidBackbone(nn.Module):
    """A dense backbone's four maps through an FPN: what torchvision's ``MaskRCNN`` expects (``out_channels``, an
    ordered dict of maps)."""

    def __init__(self, body: nn.Module, channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            list(body.out_channels), channels, extra_blocks=LastLevelMaxPool(), norm_layer=group_norm
        )
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(self.body(images))))


class MaskRCNNDetector(nn.Module):
    """``forward(images, targets)`` as torchvision's detection models: a dict of losses in training, one dict of
    ``boxes``, ``labels``, ``scores``, ``masks`` per image (in its own coordinates) in eval mode.

    ``img_size``: the side training crops have and validation images are resized to (longer side);
    ``mean``/``std``: the input normalization, applied inside the model like torchvision does.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        img_size: int,
        mean: list[float],
        std: list[float],
        fpn_channels: int = 256,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        detections_per_image: int = 100,
    ) -> None:
        super().__init__()
        pyramid = PyramidBackbone(backbone, fpn_channels)
        anchors = AnchorGenerator(ANCHOR_SIZES, (ASPECT_RATIOS,) * len(ANCHOR_SIZES))
        self.net = MaskRCNN(
            pyramid,
            min_size=img_size,
            max_size=img_size,
            image_mean=list(mean),
            image_std=list(std),
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(fpn_channels, len(ASPECT_RATIOS), conv_depth=2),
            rpn_batch_size_per_image=rpn_batch_size_per_image,
            box_head=FastRCNNConvFCHead(
                (fpn_channels, 7, 7), [fpn_channels] * 4, [BOX_HEAD_WIDTH], norm_layer=group_norm
            ),
            box_predictor=FastRCNNPredictor(BOX_HEAD_WIDTH, num_classes + 1),  # + background
            box_batch_size_per_image=box_batch_size_per_image,
            box_detections_per_img=detections_per_image,
            mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1, norm_layer=group_norm),
            mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1),
        )

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone.body

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        return self.net(images, targets)

    def layer_ordinal(self, name: str) -> tuple[float, ...]:
        """The backbone's layer rule for its parameters; the FPN and heads come after every backbone layer."""
        if name.startswith(BACKBONE_PREFIX):
            return self.backbone.layer_ordinal(name[len(BACKBONE_PREFIX) :])
        return (math.inf,)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], tuple[float, ...]]:
        """For timm's layer-wise lr decay (:func:`mimkit.engine.optim.layer_decay_param_groups`)."""
        return self.layer_ordinal
