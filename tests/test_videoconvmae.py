"""VideoConvMAE: leak-freedom of masked 3-D convolution under tube and random masking, the masks, sizes, configs,
a tiny CLI pretraining run with its reconstruction picture and one fine-tuning step on labelled clips."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import mimkit
from mimkit.cli import main
from mimkit.config_schema import ConfigError
from mimkit.data.video import SampleClips
from mimkit.engine.config import load_pretrain_config
from mimkit.errors import MimkitError
from mimkit.eval.classifier import Classifier
from mimkit.eval.config import load_knn_config, load_transfer_config
from mimkit.eval.knn import knn_evaluate
from mimkit.eval.transfer import linprobe
from mimkit.export import export_encoder
from mimkit.inference import visualize_images
from mimkit.masking_video import num_hidden_tokens, random_video_masking, tube_masking
from mimkit.models import create_encoder
from mimkit.pos_embed import sincos_2d
from mimkit.pos_embed_video import sincos_3d
from mimkit.visualize_video import cube_mask_to_pixels
from tests.transfer_files import pretrain_checkpoint

SMALL = dict(
    embed_dims=(16, 32, 64),
    depths=(1, 1, 2),
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
    img_size=64,
    num_frames=8,
)
SMALL_ARGS = [f"model.args.{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in SMALL.items()]


def _model(**overrides):
    """A small model whose biases and norm parameters are random too: with their zero initialization a masked
    position's features stay zero through a block, which would hide a conv that forgot the mask."""
    torch.manual_seed(0)
    model = mimkit.create_model("videoconvmae_tiny", **{**SMALL, **overrides}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _masked_and_changed(model, clips, seed=1):
    noise = model.sample_noise(clips.shape[0], tuple(clips.shape[-2:]), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        before = model(clips, noise=noise)
    pixels = cube_mask_to_pixels(before["mask"], model, clips)
    return noise, before, clips + 5 * torch.randn_like(clips) * pixels


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="tube"),
        pytest.param({"masking": "random"}, id="random"),
        pytest.param({"skip_masked_regions": False}, id="tube-dense-conv-stages"),
        pytest.param({"masking": "random", "multiscale_decoder": False, "temporal_kernel_size": 5}, id="random-t5"),
    ],
)
def test_masked_pixels_in_any_frame_cannot_change_any_prediction(overrides):
    model = _model(**overrides)
    clips = torch.randn(2, 3, 8, 64, 96)
    noise, before, changed = _masked_and_changed(model, clips)
    frames_changed = (changed != clips).flatten(3).any(dim=-1).any(dim=1).sum(dim=-1)
    assert (frames_changed == 8).all()  # masked pixels changed in every frame of both clips
    with torch.no_grad():
        after = model(changed, noise=noise)
    assert torch.equal(before["latent"], after["latent"])
    assert torch.equal(before["pred"], after["pred"])
    assert not torch.equal(before["loss"], after["loss"])  # the targets of the masked cubes did change


def test_the_same_change_reaches_an_unmasked_encoding():
    """The control of the leak test: encoding the whole clip, the changed pixels do move the visible tokens."""
    model = _model()
    clips = torch.randn(1, 3, 8, 64, 64)
    _, before, changed = _masked_and_changed(model, clips)
    visible = before["mask"][0] == 0
    with torch.no_grad():
        full, full_changed = model.encoder(clips).stage3, model.encoder(changed).stage3
    assert not torch.allclose(full[:, visible], full_changed[:, visible])


def test_visible_only_conv_stages_equal_the_dense_masked_computation():
    model = _model(masking="random")
    clips = torch.randn(2, 3, 8, 64, 64)
    noise = model.sample_noise(2, (64, 64), torch.Generator().manual_seed(3))
    with torch.no_grad():
        sparse = model(clips, noise=noise)
        model.config.skip_masked_regions = False
        dense = model(clips, noise=noise)
    torch.testing.assert_close(sparse["latent"], dense["latent"], rtol=0, atol=1e-5)
    torch.testing.assert_close(sparse["pred"], dense["pred"], rtol=0, atol=1e-5)


def test_tube_mask_repeats_one_spatial_mask_over_time_at_the_exact_ratio():
    noise = torch.rand(3, 196, generator=torch.Generator().manual_seed(0))
    mask = tube_masking(noise, frames=8, mask_ratio=0.9)
    per_frame = mask.mask.reshape(3, 8, 196)
    assert torch.equal(per_frame, per_frame[:, :1].expand_as(per_frame))
    assert (per_frame.sum(dim=-1) == 176).all()  # VideoMAE's int(0.9 * 196) hidden per frame
    assert mask.ids_keep.shape == (3, 8 * 20)
    kept = torch.zeros(3, 8 * 196).scatter_(1, mask.ids_keep, 1.0)
    assert torch.equal(kept, 1 - mask.mask)
    assert torch.equal(per_frame[:, 0], (noise.argsort(dim=1).argsort(dim=1) >= 20).float())  # largest noise hidden


def test_random_video_masking_hides_cubes_independently():
    noise = torch.rand(2, 8 * 49, generator=torch.Generator().manual_seed(0))
    mask = random_video_masking(noise, 0.9).mask
    assert (mask.sum(dim=1) == num_hidden_tokens(8 * 49, 0.9)).all()
    per_frame = mask.reshape(2, 8, 49)
    assert not torch.equal(per_frame, per_frame[:, :1].expand_as(per_frame))


def test_spatio_temporal_positions_append_a_time_code_to_the_image_table():
    table = sincos_3d(64, (4, 3, 5))
    assert table.shape == (1 + 60, 64)
    assert torch.equal(table[0], torch.zeros(64))
    tokens = table[1:].reshape(4, 15, 64)
    for t in range(4):
        assert torch.equal(tokens[t, :, :48], sincos_2d(48, 3, 5))
    assert torch.equal(tokens[:, :1, 48:].expand(-1, 15, -1), tokens[:, :, 48:])
    assert not torch.equal(tokens[0, :, 48:], tokens[1, :, 48:])


def test_base_model_size_and_shapes():
    model = mimkit.create_model("videoconvmae_base")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 96_844_160
    assert sum(p.numel() for p in model.encoder.parameters()) == 84_531_584
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 224, 224), noise=torch.rand(1, 196))
    assert out["pred"].shape == (1, 1568, 2 * 16 * 16 * 3)
    assert out["mask"].shape == (1, 1568) and out["mask"].sum() == 8 * 176
    assert out["latent"].shape == (1, 8 * 20, 768)
    with torch.device("meta"):
        encoder = create_encoder("videoconvmae_base")
    assert sum(p.numel() for p in encoder.parameters()) == 84_531_584


def test_encoder_pools_and_classifies_clips_and_gives_feature_volumes():
    encoder = create_encoder("videoconvmae_tiny", **SMALL)
    classifier = Classifier(encoder, num_classes=3)
    clips = torch.randn(2, 3, 8, 64, 48)
    assert classifier(clips).shape == (2, 3)
    maps = encoder.feature_maps(clips)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 4, 16, 12), (2, 32, 4, 8, 6), (2, 64, 4, 4, 3)]
    assert [info["num_chs"] for info in encoder.feature_info] == [16, 32, 64]


def _tiny_clip_transfer(train, val) -> list[str]:
    """Overrides of a transfer run of a tiny video encoder on the labelled clip folders ``train`` and ``val``."""
    return [
        "model.name=videoconvmae_tiny",
        "model.args.embed_dims=[16,32,64]",
        "model.args.depths=[1,1,2]",
        "model.args.num_heads=2",
        "data.source=clips",
        f"data.train_path={train}",
        f"data.val_path={val}",
        "data.img_size=32",
        "data.in_chans=3",
        "data.mean=[0.5,0.5,0.5]",
        "data.std=[0.25,0.25,0.25]",
        "data.num_frames=4",
        "data.num_workers=0",
    ]


def test_bad_configs_and_inputs_get_errors_naming_the_field():
    with pytest.raises(ConfigError, match="decoder_embed_dim"):
        mimkit.create_model("videoconvmae_tiny", decoder_embed_dim=40, decoder_num_heads=2)
    with pytest.raises(ConfigError, match="masking"):
        mimkit.create_model("videoconvmae_tiny", masking="block")
    with pytest.raises(ConfigError, match="num_frames"):
        mimkit.create_model("videoconvmae_tiny", num_frames=15)
    with pytest.raises(ConfigError, match="data.source 'samples' gives images but model 'videoconvmae_tiny'"):
        load_pretrain_config(None, ["model.name=videoconvmae_tiny"])
    with pytest.raises(ConfigError, match="data.source 'sample_clips' gives clips"):
        load_pretrain_config(None, ["data.source=sample_clips"])
    with pytest.raises(ConfigError, match="data.source 'fashion_mnist' gives images but model 'videoconvmae_tiny'"):
        load_transfer_config("finetune", None, ["model.name=videoconvmae_tiny"])
    with pytest.raises(ConfigError, match="frame_stride"):
        load_pretrain_config(None, ["model.name=videoconvmae_tiny", "data.source=sample_clips", "data.frame_stride=0"])
    with pytest.raises(ValueError, match="clips of 8 frames"):
        _model()(torch.randn(1, 3, 4, 64, 64))
    with pytest.raises(ValueError, match="frames, height, width"):
        _model()(torch.randn(1, 3, 64, 64))


def test_tiny_pretraining_from_the_cli_writes_a_frame_row_picture(tmp_path, capsys):
    output = tmp_path / "run"
    args = [
        "pretrain",
        "--config",
        "videoconvmae/videoconvmae_tiny_clips",
        "--output",
        str(output),
        *SMALL_ARGS,
        "data.img_size=64",
        "data.num_frames=8",
        "data.samples_per_epoch=8",
        "train.epochs=1",
        "train.batch_size=4",
        "train.visualize_images=2",
    ]
    assert main(args) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    with Image.open(output / "reconstructions" / "epoch_0000.png") as picture:
        # 2 clips x 4 rows (original | masked | reconstruction | pasted), 8 frames per row, 2 px padding.
        assert picture.size == (8 * 66 + 2, 2 * 4 * 66 + 2)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["loss"] > 0 for r in records)
    with pytest.raises(MimkitError, match="VideoConvViTEncoder, which has no timm export"):
        export_encoder(output / "checkpoints" / "last.safetensors", tmp_path / "encoder.safetensors")
    with pytest.raises(MimkitError, match="holds a video model"):
        visualize_images(output / "checkpoints" / "last.safetensors", [tmp_path], tmp_path / "grid.png")


def test_data_flag_of_a_video_config_reads_a_folder_of_clips(tmp_path, capsys):
    train, _ = _write_labelled_clips(tmp_path / "clips")
    args = ["pretrain", "--config", "videoconvmae/videoconvmae_tiny_clips", "--data", str(train)]
    args += ["--output", str(tmp_path / "run"), *SMALL_ARGS, "data.img_size=32", "data.num_frames=8"]
    args += ["data.frame_stride=1", "train.batch_size=4", "train.epochs=1", "train.visualize_images=0"]
    assert main(args) == 0
    assert "done: 1 steps" in capsys.readouterr().out


def _write_labelled_clips(root, size=32):
    """Two classes of frame folders made from generated clips (class = which photo the clip pans over)."""
    source = SampleClips(clips_per_photo=2, length=8, size=size)
    for split, indices in (("train", (0, 1, 18, 19)), ("val", (0, 1))):
        for index in indices:
            frames = source.load(index)
            folder = root / split / f"photo{index % 2}" / f"clip{index}"
            folder.mkdir(parents=True)
            for k in range(len(frames)):
                frames.load(k).convert("RGB").save(folder / f"{k:03d}.png")
    return root / "train", root / "val"


def test_one_fine_tuning_step_on_labelled_frame_folders(tmp_path, capsys):
    train, val = _write_labelled_clips(tmp_path / "clips")
    args = [
        "finetune",
        "--output",
        str(tmp_path / "ft"),
        *_tiny_clip_transfer(train, val),
        "data.frame_stride=2",
        "train.batch_size=4",
        "train.epochs=1",
        "train.max_steps=1",
        "train.eval_batch_size=2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epoch 0: val top-1" in out
    assert (tmp_path / "ft" / "checkpoints" / "last.safetensors").is_file()


def test_knn_and_linear_probe_read_labelled_clips(tmp_path):
    train, val = _write_labelled_clips(tmp_path / "clips")
    overrides = _tiny_clip_transfer(train, val)
    result = knn_evaluate(load_knn_config(None, [*overrides, "k=2", "batch_size=2"]))
    assert (result.train_images, result.val_images) == (4, 2) and 0 <= result.top1 <= 100
    probe = load_transfer_config("linprobe", None, [*overrides, "train.batch_size=4", "train.max_steps=1"])
    probe.output = str(tmp_path / "probe")
    assert linprobe(probe).steps == 1


def test_a_video_checkpoint_makes_a_clip_transfer_run(tmp_path):
    """Transfer from a video checkpoint defaults to its model, clips, its frame count, size and normalization."""
    pretraining = ["--config", "videoconvmae/videoconvmae_tiny_clips", *SMALL_ARGS, "data.img_size=64"]
    pretraining += ["data.num_frames=8", "data.samples_per_epoch=2", "train.batch_size=2"]
    checkpoint = pretrain_checkpoint(tmp_path / "pre", *pretraining)
    config = load_knn_config(None, [f"model.checkpoint={checkpoint}", "data.mean=[0.5,0.5,0.5]"])
    assert (config.model.name, config.data.source, config.data.num_frames) == ("videoconvmae_tiny", "clips", 8)
    assert (config.data.img_size, config.data.in_chans, config.data.mean) == (64, 3, [0.5, 0.5, 0.5])
    assert config.model.args == {}  # the encoder is built from the configuration the checkpoint records
