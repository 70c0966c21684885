"""The ConvViT detection variant (MCMAE Sec. 2.3): window attention in stage 3, pretrained weights kept."""

from __future__ import annotations

import pytest
import torch

import mimkit
from mimkit.backbones.convvit_detection import ConvViTDetectionEncoder
from mimkit.errors import MimkitError


def _pair(global_blocks=(0,)):
    torch.manual_seed(0)
    encoder = mimkit.create_model("convmae_tiny").encoder_module().eval()
    return encoder, ConvViTDetectionEncoder.from_encoder(encoder, global_blocks=global_blocks).eval()


def test_on_a_grid_of_one_window_it_computes_what_the_pretrained_encoder_does():
    encoder, detection = _pair()
    images = torch.randn(2, 3, 112, 112)  # a 7x7 stage-3 grid: one window, no shift, zero bias tables
    with torch.no_grad():
        for plain, windowed in zip(encoder.feature_maps(images), detection.feature_maps(images), strict=True):
            assert (plain - windowed).abs().max().item() <= 1e-5
    assert torch.equal(detection.blocks3[2].attn.qkv.weight, encoder.blocks3[2].attn.qkv.weight)


@pytest.mark.parametrize("shift", [0, 3])
def test_a_local_block_sees_only_its_window(shift):
    """On a 14x14 grid, a token changed in one window leaves every token of another window unchanged; with the
    shifted windows, tokens that the cyclic roll brings together (opposite corners) still do not mix."""
    _, detection = _pair(global_blocks=())
    block = detection.blocks3[1]
    tokens = torch.randn(1, 196, detection.embed_dims[2])
    bias = detection.window_attention_bias((14, 14), shift, tokens.dtype)
    changed = tokens.clone()
    changed[0, 13 * 14 + 13] += 5.0  # bottom-right corner
    with torch.no_grad():
        before = detection._windowed(block, tokens, (14, 14), shift, bias)
        after = detection._windowed(block, changed, (14, 14), shift, bias)
    moved = (before - after).abs().amax(dim=-1).reshape(14, 14)
    assert moved[0, 0] == 0 and moved[:7, :7].max() == 0  # top-left window (and rolled-in corner) untouched
    assert moved[12, 12] > 0  # a neighbour in its window sees it


def test_detection_encoder_refuses_masked_pretraining_and_oversized_grids():
    _, detection = _pair()
    with pytest.raises(ValueError, match="runs on whole images"):
        detection(torch.randn(1, 3, 64, 64), ids_keep=torch.zeros(1, 4, dtype=torch.long))
    small = ConvViTDetectionEncoder.from_encoder(mimkit.create_model("convmae_tiny").encoder_module(), max_grid=8)
    with pytest.raises(MimkitError, match="exceeds the relative position bias table"):
        small(torch.randn(1, 3, 160, 160))
