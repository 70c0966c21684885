"""MR-MAE / MR-MCMAE: the mimic loss's token partition, each Sec. 3.3 option, the Table 3/4 variants."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

import mimkit
from mimkit.config_schema import ConfigError
from mimkit.engine.config import load_pretrain_config
from mimkit.engine.pretrain import build_pretrain_model
from mimkit.errors import MimkitError
from mimkit.masking import gather_tokens, random_masking
from mimkit.masking_focus import focused_scores
from mimkit.methods.mrmae import MimicBeforeReconstruct
from mimkit.patches import grid_size
from mimkit.targets.teacher_features import teacher_feature_target
from mimkit.teachers import TeacherOutput
from mimkit.visualize import reconstruction_grid
from tests.teacher_files import TINY_MAE_ARGS, save_tiny_vit_teacher, tiny_vit_teacher_config

SMALL_VIT = TINY_MAE_ARGS
SMALL_CONVVIT = {"embed_dims": (8, 16, 32), "depths": (1, 1, 2), "num_heads": 2, "decoder_embed_dim": 16}
SMALL_CONVVIT.update(decoder_depth=1, decoder_num_heads=2, img_size=64, fusion_layers=(), focused_mimicking=False)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The ``teacher`` field of a tiny timm ViT saved by the test itself."""
    return tiny_vit_teacher_config(save_tiny_vit_teacher(tmp_path_factory.mktemp("teacher") / "vit.safetensors"))


def mrmae(teacher, **overrides) -> MimicBeforeReconstruct:
    torch.manual_seed(0)
    return mimkit.create_model("mrmae_vit_tiny", teacher=teacher, **{**SMALL_VIT, **overrides})


def mrmcmae(teacher, **overrides) -> MimicBeforeReconstruct:
    torch.manual_seed(0)
    return mimkit.create_model("mrmcmae_tiny", teacher=teacher, **{**SMALL_CONVVIT, **overrides})


def inputs(model: MimicBeforeReconstruct, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 64, 64, generator=generator)
    return images, model.sample_noise(batch, (64, 64), generator)


def with_teacher_outputs(model: MimicBeforeReconstruct, outputs: list[TeacherOutput]) -> None:
    """Make ``model`` read ``outputs`` instead of running its teachers."""
    model.teach = lambda images, grid: outputs


@pytest.mark.parametrize("build", [mrmae, mrmcmae], ids=["mrmae", "mrmcmae"])
def test_mimic_loss_ignores_teacher_features_at_masked_positions(teacher, build):
    """Eq. 2 reads visible tokens only: rewriting the teacher's features where the image is masked leaves
    ``loss_mimic`` (and ``loss_rec``) unchanged, rewriting them where it is visible changes it."""
    model = build(teacher)
    images, noise = inputs(model)
    taught = model.teach(images, grid_size(64, 64, model.patch_size))
    reference = model(images, noise=noise)
    masked = reference["mask"].bool().unsqueeze(-1)
    scrambled = torch.randn_like(taught[0].features) * 5

    with_teacher_outputs(model, [TeacherOutput(torch.where(masked, scrambled, taught[0].features), None)])
    at_masked = model(images, noise=noise)
    with_teacher_outputs(model, [TeacherOutput(torch.where(masked, taught[0].features, scrambled), None)])
    at_visible = model(images, noise=noise)

    torch.testing.assert_close(at_masked["loss_mimic"], reference["loss_mimic"], rtol=0, atol=0)
    torch.testing.assert_close(at_masked["loss_rec"], reference["loss_rec"], rtol=0, atol=0)
    assert not torch.allclose(at_visible["loss_mimic"], reference["loss_mimic"])


def test_loss_is_half_mimic_half_reconstruction_and_only_the_student_learns(teacher):
    model = mrmae(teacher)
    images, noise = inputs(model)
    out = model(images, noise=noise)
    assert {"loss", "pred", "mask", "loss_mimic", "loss_rec"} <= set(out)
    torch.testing.assert_close(out["loss"], 0.5 * out["loss_mimic"] + 0.5 * out["loss_rec"])
    out["loss"].backward()
    assert model.mimic_heads[0].weight.grad.abs().sum() > 0
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    teacher_params = list(model.teachers[0].parameters())
    assert teacher_params and all(not p.requires_grad and p.grad is None for p in teacher_params)
    assert not {id(p) for p in teacher_params} & {id(p) for p in model.parameters()}
    assert not any("teacher" in name or "network" in name for name in model.state_dict())


def test_teachers_stay_in_eval_mode(teacher):
    model = mrmae(teacher).train()
    assert not model.teachers[0].training
    model.teachers[0].train()
    assert not model.teachers[0].training


def test_low_level_variant_is_mae_and_needs_no_teacher():
    """Table 3 row 1: with rec_weight 1 and no teacher, the loss is exactly MAE's for the same weights."""
    model = mrmae(None, variant="low_level", rec_weight=1.0)
    mae = mimkit.create_model("mae_vit_tiny_patch16", **SMALL_VIT)
    mae.load_state_dict(model.state_dict())
    images, noise = inputs(model)
    out = model(images, noise=noise)
    torch.testing.assert_close(out["loss"], mae(images, noise=noise)["loss"])
    assert "loss_mimic" not in out and model.teachers == [] and model.mimic_heads is None


def test_high_level_variant_has_no_decoder_and_predicts_teacher_features(teacher):
    model = mrmae(teacher, variant="high_level")
    images, noise = inputs(model)
    out = model(images, noise=noise)
    assert model.decoder is None and not model.predicts_pixels and "loss_rec" not in out
    assert out["pred"].shape == (2, 4, model.teachers[0].feature_dim)
    torch.testing.assert_close(out["loss"], 0.5 * out["loss_mimic"])


def test_both_at_decoder_variant_predicts_teacher_features_of_the_masked_tokens(teacher):
    """Table 3's "conflict" row: the high-level target moves to the decoder's masked tokens, so the teacher's
    visible-token features no longer matter, and the encoder has no mimic head."""
    model = mrmae(teacher, variant="both_at_decoder")
    images, noise = inputs(model)
    reference = model(images, noise=noise)
    assert model.mimic_heads is None
    assert model.decoder.pred.out_features == 16 * 16 * 3 + model.teachers[0].feature_dim
    taught = model.teach(images, (4, 4))[0]
    visible = 1 - reference["mask"].unsqueeze(-1)
    with_teacher_outputs(model, [TeacherOutput(taught.features + 3 * visible, None)])
    torch.testing.assert_close(model(images, noise=noise)["loss_mimic"], reference["loss_mimic"], rtol=0, atol=0)
    torch.testing.assert_close(reference["loss"], 0.5 * reference["loss_mimic"] + 0.5 * reference["loss_rec"])


def test_joint_teachers_get_one_head_each_and_their_losses_are_averaged(teacher, tmp_path):
    """Table 4's joint CLIP+DINO: one linear head per teacher (widths may differ), L_M = mean of the two."""
    wide_args = {**teacher["model_args"], "embed_dim": 48, "num_heads": 3}
    wide = save_tiny_vit_teacher(tmp_path / "wide.safetensors", **wide_args)
    second = {**teacher, "model_args": wide_args, "weights": str(wide)}
    model = mrmae(teacher, second_teacher=second)
    assert [head.out_features for head in model.mimic_heads] == [32, 48]
    images, noise = inputs(model)
    out = model(images, noise=noise)
    ids_keep = random_masking(noise, model.config.mask_ratio).ids_keep
    terms = [
        F.mse_loss(head(out["latent"][:, 1:]), gather_tokens(teacher_feature_target(t.features, True), ids_keep))
        for head, t in zip(model.mimic_heads, model.teach(images, (4, 4)), strict=True)
    ]
    torch.testing.assert_close(out["loss_mimic"], (terms[0] + terms[1]) / 2)


def test_focused_scores_top_rule_keeps_the_most_salient_tokens():
    saliency = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05]])
    scores = focused_scores(saliency, torch.rand(1, 5), "top")
    assert set(scores.argsort(dim=1)[0, :2].tolist()) == {1, 3}


def test_focused_scores_sample_rule_draws_in_proportion_to_saliency():
    """One visible token of four: drawn with probability saliency / sum (Gumbel-top-1), and raising a token's
    saliency never hides it when the noise is fixed."""
    saliency = torch.tensor([0.1, 0.2, 0.3, 0.4]).expand(20000, -1)
    noise = torch.rand(20000, 4, generator=torch.Generator().manual_seed(0))
    first = focused_scores(saliency, noise).argmin(dim=1)
    frequency = torch.bincount(first, minlength=4).float() / 20000
    torch.testing.assert_close(frequency, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015, rtol=0)
    boosted = saliency.clone()
    boosted[:, 0] = 0.9
    assert bool((focused_scores(boosted, noise).argmin(dim=1)[first == 0] == 0).all())


def test_focused_mimicking_makes_the_teachers_salient_tokens_visible(teacher):
    model = mrmae(teacher, focused_mimicking=True, focus_rule="top", mask_ratio=0.75)
    images, noise = inputs(model)
    attention = model.teach(images, (4, 4))[0].cls_attention
    visible = 1 - model(images, noise=noise)["mask"]
    top = torch.zeros_like(visible).scatter_(1, attention.topk(4, dim=1).indices, 1.0)
    torch.testing.assert_close(visible, top)
    sampled = mrmae(teacher, focused_mimicking=True)
    assert not torch.equal(sampled(images, noise=noise)["mask"], sampled(images, noise=noise.flip(1))["mask"])


def test_focused_mimicking_needs_a_teacher_with_cls_attention(tmp_path):
    path = tmp_path / "cnn.safetensors"
    save_file(torchvision.models.mobilenet_v2(width_mult=0.25).state_dict(), str(path))
    cnn = {"kind": "torchvision_cnn", "name": "mobilenet_v2", "weights": str(path), "model_args": {"width_mult": 0.25}}
    with pytest.raises(ConfigError, match="model.focused_mimicking"):
        mrmae(cnn, focused_mimicking=True)


@pytest.mark.parametrize("build, last", [(mrmae, 1), (mrmcmae, 1)], ids=["mrmae", "mrmcmae"])
def test_fusing_only_the_last_block_is_the_plain_encoder_output(teacher, build, last):
    """Multi-layer fusion sums the chosen blocks' tokens before the final norm: the last block alone is the
    default path exactly, and adding an earlier block changes the tokens both heads read."""
    plain = build(teacher)
    images, noise = inputs(plain)
    reference = plain(images, noise=noise)
    last_only = build(teacher, fusion_layers=(last,))
    last_only.load_state_dict(plain.state_dict())
    torch.testing.assert_close(last_only(images, noise=noise)["latent"], reference["latent"])
    fused = build(teacher, fusion_layers=(0, last))
    fused.load_state_dict(plain.state_dict())
    out = fused(images, noise=noise)
    assert not torch.allclose(out["latent"], reference["latent"])
    out["loss_mimic"].backward()
    assert fused.encoder_module().state_dict(keep_vars=True)[_first_block_weight(fused)].grad.abs().sum() > 0


def _first_block_weight(model: MimicBeforeReconstruct) -> str:
    return "blocks.0.attn.qkv.weight" if hasattr(model.encoder, "blocks") else "blocks3.0.attn.qkv.weight"


def test_mrmcmae_masks_block_wise_and_keeps_conv_stages_masked(teacher):
    """Masked convolution stages: pixels of masked 16x16 blocks do not reach the mimicked visible tokens."""
    model = mrmcmae(teacher)
    images, noise = inputs(model)
    out = model(images, noise=noise)
    changed = images.clone()
    block = out["mask"][0].reshape(4, 4).nonzero()[0]
    y, x = int(block[0]) * 16, int(block[1]) * 16
    changed[0, :, y : y + 16, x : x + 16] += 10
    with_teacher_outputs(model, model.teach(images, (4, 4)))
    torch.testing.assert_close(model(changed, noise=noise)["latent"], out["latent"])


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"fusion_layers": (2,)}, "fusion_layers"),
        ({"fusion_layers": (0,)}, "fusion_layers must include the last block"),
        ({"variant": "mimic_reconstruct", "teacher": None}, "teacher"),
        ({"input_mean": (0.5,)}, "input_mean"),
    ],
)
def test_bad_mimic_options_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        mimkit.models.model_config("mrmae_vit_tiny", **{**SMALL_VIT, **overrides})


def test_mrmcmae_refuses_convmae_options_it_does_not_run():
    with pytest.raises(ConfigError, match="masking"):
        mimkit.models.model_config("mrmcmae_tiny", masking="random")


def test_teacher_override_keeps_the_registered_teacher_fields():
    """``model.args.teacher.weights=...`` on the CLI (and ``teacher={'weights': ...}``) changes that field only."""
    config = mimkit.models.model_config("mrmae_vit_base", teacher={"weights": "/data/clip_b16.safetensors"})
    assert config.teacher.name == "vit_base_patch16_clip_224.openai" and config.teacher.weights.endswith(
        "16.safetensors"
    )
    replaced = mimkit.models.model_config("mrmae_vit_base", teacher=dataclasses.replace(config.teacher, bf16=True))
    assert replaced.teacher.bf16 and replaced.teacher.weights == config.teacher.weights


def test_missing_teacher_weights_name_the_field():
    with pytest.raises(ConfigError, match="model.teacher.weights"):
        mimkit.create_model("mrmae_vit_tiny", **SMALL_VIT)


def test_high_level_variant_pictures_show_the_input_and_its_mask_only(teacher):
    model = mrmae(teacher, variant="high_level")
    images, noise = inputs(model)
    tiles = reconstruction_grid(model, images, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], noise=noise)
    assert tiles.shape == (2, 2, 3, 64, 64)


def test_engine_hands_the_data_normalization_to_the_teacher_side():
    overrides = ["model.name=mrmae_vit_tiny", "model.args.variant=low_level", "model.args.teacher=null"]
    overrides += ["model.args.depth=1", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]
    model = build_pretrain_model(load_pretrain_config(None, overrides))
    assert model.input_mean.tolist() == [0.5] * 3 and model.input_std.tolist() == [0.25] * 3
    with pytest.raises(MimkitError, match=r"model.args.input_mean=\[0.1, 0.1, 0.1\] disagrees with data.mean"):
        build_pretrain_model(load_pretrain_config(None, [*overrides, "model.args.input_mean=[0.1,0.1,0.1]"]))
