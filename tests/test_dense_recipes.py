"""The packaged detection and segmentation recipes: each loads, builds its model, and the models have the sizes the
papers report (their heads' widths are not stated, so the parameter counts are what pins them down)."""

from __future__ import annotations

import pytest
import torch

from mimkit.config_paths import packaged_configs, resolve_config_path
from mimkit.dense.backbones import build_dense_backbone
from mimkit.dense.config import load_detect_config, load_segment_config
from mimkit.dense.detector import MaskRCNNDetector
from mimkit.dense.segmenter import Segmenter
from mimkit.eval.loading import load_encoder

DETECT_PATHS = ["data.train_images=a", "data.train_annotations=b", "data.val_images=c", "data.val_annotations=d"]
PAPER_MILLIONS = {
    "detect/convmae_base_maskrcnn_25ep": 104,  # MCMAE Table 2
    "detect/mae_vit_base_vitdet_100ep": 111,  # MCMAE Table 2 (ViTDet)
    "detect/mixmae_swin_base_maskrcnn_55ep": 110,  # MixMAE Table 4
    "segment/convmae_base_upernet_16k": 153,  # MCMAE Table 3
    "segment/mae_vit_base_upernet_160k": 164,  # MixMAE Table 4 (163 in MCMAE Table 3)
    "segment/mixmae_swin_base_upernet_16k": 122,  # MixMAE Table 4
    "segment/mixmae_swin_large_upernet_16k": 236,  # MixMAE Table 4
}
"""Parameters in millions as the papers report them (COCO: 80 classes; ADE20K: 150)."""
RECIPES = [name for name, _ in packaged_configs() if name.startswith(("detect/", "segment/"))]


def build(name: str) -> torch.nn.Module:
    task = name.split("/")[0]
    if task == "detect":
        config = load_detect_config(resolve_config_path(name), DETECT_PATHS)
    else:
        config = load_segment_config(resolve_config_path(name), ["data.path=ADEChallengeData2016"])
    model, data = config.model, config.data
    with torch.device("meta"):
        encoder = load_encoder(model.name, model.encoder_args(data.img_size, data.in_chans, config.train.drop_path))
        backbone = build_dense_backbone(encoder, task, model.window, model.global_blocks, model.feature_blocks)
        if task == "detect":
            return MaskRCNNDetector(backbone, 80, data.img_size, data.mean, data.std, model.fpn_channels)
        return Segmenter(backbone, data.num_classes, model.channels, model.aux_channels, model.aux_weight)


def test_every_task_has_recipes_for_every_paper():
    assert len([r for r in RECIPES if r.startswith("detect/")]) >= 4
    assert len([r for r in RECIPES if r.startswith("segment/")]) >= 6


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_with_the_papers_size(name):
    millions = sum(p.numel() for p in build(name).parameters()) / 1e6
    if name in PAPER_MILLIONS:
        assert millions == pytest.approx(PAPER_MILLIONS[name], rel=0.04)
