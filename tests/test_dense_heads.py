"""UperNet + auxiliary FCN segmenter (mimkit.dense.upernet, mimkit.dense.segmenter) on a stand-in backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay
from torch import nn

from mimkit.dense.segmenter import Segmenter, sliding_windows
from mimkit.dense.upernet import AuxiliaryFCNHead, UperNetHead, group_norm

NUM_CLASSES = 5


class StandInBackbone(nn.Module):
    """The dense-backbone interface with four strided convs: maps at strides 4, 8, 16, 32."""

    out_channels = (6, 8, 12, 16)

    def __init__(self) -> None:
        super().__init__()
        ins = (3, *self.out_channels[:-1])
        strides = (4, 2, 2, 2)
        layers = zip(ins, self.out_channels, strides, strict=True)
        self.stages = nn.ModuleList(nn.Conv2d(i, o, s, stride=s) for i, o, s in layers)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            images = torch.relu(stage(images))
            maps.append(images)
        return maps

    def layer_ordinal(self, name: str) -> tuple[float, ...]:
        return (int(name.split(".")[1]),)


def segmenter(dropout: float = 0.1) -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(StandInBackbone(), NUM_CLASSES, channels=16, aux_channels=8, dropout=dropout)


def test_group_norm_keeps_at_least_four_channels_a_group():
    assert [group_norm(c).num_groups for c in (512, 256, 16, 24, 3)] == [32, 32, 4, 6, 1]


def test_heads_predict_at_stride_4_and_16_and_the_segmenter_at_input_size():
    backbone = StandInBackbone()
    maps = backbone(torch.rand(2, 3, 64, 96))
    assert [m.shape[-1] for m in maps] == [24, 12, 6, 3]
    assert UperNetHead(backbone.out_channels, NUM_CLASSES, 16)(maps).shape == (2, NUM_CLASSES, 16, 24)
    assert AuxiliaryFCNHead(12, NUM_CLASSES, 8)(maps).shape == (2, NUM_CLASSES, 4, 6)
    assert segmenter()(torch.rand(2, 3, 64, 96)).shape == (2, NUM_CLASSES, 64, 96)


def test_loss_is_decode_plus_0_4_aux_cross_entropy_over_all_pixels_ignoring_255():
    model = segmenter(dropout=0.0)
    images = torch.rand(2, 3, 64, 64)
    labels = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    labels[0, :40] = 255
    total, parts = model.loss(images, labels)
    logits = model(images)
    expected_decode = F.cross_entropy(logits, labels, ignore_index=255, reduction="sum") / labels.numel()
    assert parts["decode"].item() == pytest.approx(expected_decode.item(), rel=1e-5)
    assert total.item() == pytest.approx(parts["decode"].item() + 0.4 * parts["aux"].item(), rel=1e-6)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())
    unlabelled, _ = model.loss(images, torch.full_like(labels, 255))
    assert unlabelled.item() == 0.0


def test_a_batch_split_in_halves_gives_the_same_gradient_as_one_batch():
    """What a 2-process DDP step computes (the mean of the halves' gradients) equals the 1-process step: GroupNorm
    and a loss averaged over all pixels make a sample's contribution independent of its batch."""
    model = segmenter(dropout=0.0)
    images = torch.rand(4, 3, 64, 64)
    labels = torch.randint(0, NUM_CLASSES, (4, 64, 64))
    labels[1, 10:50] = 255

    def gradients(part: slice) -> list[torch.Tensor]:
        model.zero_grad()
        model.loss(images[part], labels[part])[0].backward()
        return [p.grad.clone() for p in model.parameters()]

    whole = gradients(slice(0, 4))
    halves = [(a + b) / 2 for a, b in zip(gradients(slice(0, 2)), gradients(slice(2, 4)), strict=True)]
    for full, split in zip(whole, halves, strict=True):
        torch.testing.assert_close(split, full, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("height", "width", "crop", "stride"), [(70, 100, 32, 21), (20, 50, 32, 16), (64, 64, 64, 32)])
def test_sliding_windows_cover_the_image_inside_its_borders(height, width, crop, stride):
    padded_h, padded_w = max(height, crop), max(width, crop)
    covered = torch.zeros(padded_h, padded_w)
    for top, left in sliding_windows(padded_h, padded_w, crop, stride):
        assert 0 <= top <= padded_h - crop and 0 <= left <= padded_w - crop
        covered[top : top + crop, left : left + crop] += 1
    assert covered.min() >= 1


def test_slide_inference_averages_crop_sized_windows_into_the_full_image(monkeypatch):
    """With a per-pixel stand-in for the network, the averaged windows must give back that function of the whole
    image exactly: every pixel covered, each window put back where it was cut, padding dropped."""
    model = segmenter().eval()
    seen = []

    def per_pixel(windows: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(windows.shape[-2:]))
        return windows[:, :1] * torch.arange(1, NUM_CLASSES + 1).view(1, -1, 1, 1) + windows[:, 1:2]

    monkeypatch.setattr(model, "forward", per_pixel)
    for height, width in [(70, 100), (20, 50)]:
        image = torch.rand(1, 3, height, width)
        seen.clear()
        logits = model.slide_inference(image, crop=32, stride=21)
        torch.testing.assert_close(logits, per_pixel(image))
        assert set(seen[:-1]) == {(32, 32)}


def test_slide_inference_of_one_crop_sized_image_is_the_plain_forward():
    model = segmenter().eval()
    image = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(model.slide_inference(image, crop=64, stride=48), model(image))
    small = torch.rand(1, 3, 40, 56)
    padded = F.pad(small, (0, 8, 0, 24))
    torch.testing.assert_close(model.slide_inference(small, crop=64, stride=48), model(padded)[..., :40, :56])


def test_heads_come_after_every_backbone_layer_in_layer_decay():
    model = segmenter()
    assert model.layer_ordinal("backbone.stages.2.weight") == (2,)
    assert model.layer_ordinal("decode_head.fuse.0.weight") == (math.inf,)
    assert model.layer_ordinal("aux_head.classifier.1.bias") == (math.inf,)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    scales = {round(g["lr_scale"], 6) for g in groups}
    assert scales == {1.0, 0.5, 0.25, 0.125, 0.0625}
