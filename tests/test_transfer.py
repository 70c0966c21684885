"""Fine-tuning, linear probing and kNN: recipe pieces, encoder loading, and real-data checks on Fashion-MNIST."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from safetensors import safe_open
from timm.loss import SoftTargetCrossEntropy

import mimkit
from mimkit.cli import main
from mimkit.config_paths import resolve_config_path
from mimkit.config_schema import ConfigError, to_dict
from mimkit.data.sources import FASHION_MNIST_DIR
from mimkit.engine.checkpoint import load_checkpoint, save_checkpoint
from mimkit.engine.optim import layer_decay_param_groups
from mimkit.errors import MimkitError
from mimkit.eval.classifier import Classifier
from mimkit.eval.config import load_knn_config, load_transfer_config
from mimkit.eval.knn import knn_predict
from mimkit.eval.loading import load_encoder
from mimkit.eval.transfer import TransferTrainer
from mimkit.model_configs.parts import IMAGENET_MEAN, IMAGENET_STD
from mimkit.official.mae import mae_config_from_official
from tests.conftest import tiny_overrides
from tests.parity_cases import discover
from tests.transfer_files import pretrain_checkpoint, write_fashion_mnist_files, write_labelled_images

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
SMALL_VIT = [
    "model.args.patch_size=4",
    "model.args.embed_dim=64",
    "model.args.depth=2",
    "model.args.num_heads=2",
    "data.num_workers=0",
]


def _scales(model: Classifier, decay: float) -> dict[str, float]:
    groups = layer_decay_param_groups(model, weight_decay=0.05, layer_decay=decay)
    return {name: group["lr_scale"] for group in groups for name in _names(model, group["params"])}


def _names(model, params):
    ids = {id(p) for p in params}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def _decayed(model: Classifier) -> dict[str, bool]:
    groups = layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.75)
    return {name: group["weight_decay"] > 0 for group in groups for name in _names(model, group["params"])}


def test_fine_tuning_exempts_the_class_token_and_relative_position_tables_from_weight_decay():
    """MAE's fine-tuning exempts the ViT's class token (its ``no_weight_decay()``), MixMIM's the Swin's relative
    position bias tables; norms and biases go undecayed everywhere, weight matrices are decayed."""
    vit = _decayed(Classifier(mimkit.create_model("mae_vit_tiny_patch16", depth=1).encoder_module(), 10))
    assert not vit["encoder.cls_token"] and not vit["encoder.blocks.0.norm1.weight"] and not vit["head.bias"]
    assert vit["encoder.blocks.0.attn.qkv.weight"] and vit["head.weight"]
    swin = _decayed(Classifier(mimkit.create_model("mixmae_swin_tiny").encoder_module(), 10))
    tables = [name for name in swin if name.endswith("relative_position_bias_table")]
    assert tables and not any(swin[name] for name in tables)
    assert swin["encoder.layers.0.blocks.0.attn.qkv.weight"]


def test_layer_decay_follows_each_encoders_layers():
    """ViT: embeddings decay^(depth+1), block i decay^(depth-i), head 1 (MAE/BEiT). ConvViT and Swin: every
    block is a layer in running order; an embedding or patch merging joins the last block before it."""
    vit = Classifier(mimkit.create_model("mae_vit_tiny_patch16", depth=3).encoder_module(), 10)
    scales = _scales(vit, 0.5)
    assert scales["encoder.patch_embed.proj.weight"] == 0.5**4 and scales["encoder.cls_token"] == 0.5**4
    assert [scales[f"encoder.blocks.{i}.attn.qkv.weight"] for i in range(3)] == [0.5**3, 0.5**2, 0.5]
    assert scales["head.weight"] == scales["fc_norm.weight"] == 1.0

    conv = Classifier(mimkit.create_model("convmae_tiny").encoder_module(), 10)  # depths (1, 1, 4)
    scales = _scales(conv, 0.5)
    assert scales["encoder.patch_embed1.proj.weight"] == 0.5**7
    assert scales["encoder.blocks1.0.conv1.weight"] == scales["encoder.patch_embed2.proj.weight"] == 0.5**6
    assert scales["encoder.blocks2.0.conv1.weight"] == scales["encoder.patch_embed4.weight"] == 0.5**5
    assert scales["encoder.blocks3.3.attn.qkv.weight"] == 0.5

    swin = Classifier(mimkit.create_model("mixmae_swin_tiny").encoder_module(), 10)  # depths (1, 1, 2, 1)
    scales = _scales(swin, 0.5)
    assert scales["encoder.patch_embed.proj.weight"] == 0.5**6
    assert scales["encoder.layers.0.blocks.0.attn.qkv.weight"] == scales["encoder.layers.0.downsample.reduction.weight"]
    assert scales["encoder.layers.2.blocks.1.attn.qkv.weight"] == 0.5**2
    assert scales["encoder.layers.3.blocks.0.attn.qkv.weight"] == 0.5 and scales["head.weight"] == 1.0


def test_every_encoder_pools_to_one_feature_vector():
    for name, size in (("mae_vit_tiny_patch16", 32), ("convmae_tiny", 32), ("mixmae_swin_tiny", 64)):
        encoder = mimkit.create_model(name).encoder_module()
        logits = Classifier(encoder, 7)(torch.randn(2, 3, size, size))
        assert logits.shape == (2, 7), name
    assert isinstance(
        Classifier(mimkit.create_model("mixmae_swin_tiny").encoder_module(), 3).fc_norm, torch.nn.Identity
    )


def test_knn_votes_with_similarity_weights():
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    query = torch.nn.functional.normalize(torch.tensor([[0.2, 1.0], [1.0, 0.3]]), dim=1)
    scores = knn_predict(train, labels, query, num_classes=2, k=2, temperature=0.07)
    assert scores.argmax(dim=1).tolist() == [1, 0]
    one = knn_predict(train, labels, query, num_classes=2, k=1, temperature=0.07)
    assert (one > 0).sum(dim=1).tolist() == [1, 1]


def test_mimkit_pretraining_checkpoint_gives_its_encoder(tmp_path):
    model = mimkit.create_model("mae_vit_tiny_patch16", embed_dim=32, depth=2, num_heads=2)
    record = {"model": {"name": "mae_vit_tiny_patch16", "args": {}}, "resolved_model": to_dict(model.config)}
    path = save_checkpoint(tmp_path / "pre.safetensors", model, record)
    encoder = load_encoder("mae_vit_tiny_patch16", {"drop_path_rate": 0.1}, path)
    assert encoder.embed_dim == 32 and encoder.blocks[1].drop_path1.drop_prob == 0.1
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in model.encoder.state_dict().items())


@pytest.mark.parametrize("case", discover("mae"))
def test_authors_checkpoint_gives_its_encoder(case):
    """The official MAE weights of the parity case (official key names) load through the key mapping."""
    args = mae_config_from_official(case.spec["constructor_args"])
    path = case.folder / next(f for f in case.spec["files"] if f.endswith("_weights.safetensors"))
    encoder = load_encoder("mae_vit_base_patch16", args, path)
    official = case.tensors("weights")
    assert torch.equal(encoder.blocks[1].attn.qkv.weight, official["blocks.1.attn.qkv.weight"])
    assert torch.equal(encoder.patch_embed.proj.bias, official["patch_embed.proj.bias"])


def test_bad_transfer_configs_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="'train': batch_size must be even"):
        load_transfer_config("finetune", None, ["train.batch_size=7"])
    with pytest.raises(ConfigError, match="'optim.layer_decay': must be in"):
        load_transfer_config("finetune", None, ["optim.layer_decay=1.5"])
    with pytest.raises(MimkitError, match="needs data.train_path and data.val_path"):
        TransferTrainer(load_transfer_config("finetune", None, ["data.source=folder"]))
    with pytest.raises(ConfigError, match="run it with `mimkit linprobe`"):
        load_transfer_config("finetune", resolve_config_path("finetune/mae_vit_base_linprobe"))
    with pytest.raises(ConfigError, match="unknown model 'vit_gigantic'"):
        load_knn_config(None, ["model.name=vit_gigantic"])


@needs_fashion_mnist
def test_finetune_recipe_pieces_are_switched_by_the_config(tmp_path):
    config = load_transfer_config("finetune", None, [*SMALL_VIT, "data.train_limit=64", f"output={tmp_path}"])
    trainer = TransferTrainer(config)
    assert trainer.mixup is not None and isinstance(trainer.criterion, SoftTargetCrossEntropy)
    assert trainer.model.encoder.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
    assert len({group["lr_scale"] for group in trainer.optimizer.param_groups}) == 4  # stem, 2 blocks, head
    plain = TransferTrainer(
        load_transfer_config(
            "finetune", None, [*SMALL_VIT, "data.train_limit=64", "augment.mixup=0", "augment.cutmix=0"]
        )
    )
    assert plain.mixup is None and plain.criterion.smoothing == pytest.approx(0.1)


@needs_fashion_mnist
def test_linear_probe_trains_only_the_head(tmp_path):
    config = load_transfer_config(
        "linprobe",
        None,
        [
            *SMALL_VIT,
            "data.train_limit=128",
            "data.val_limit=64",
            "train.batch_size=32",
            "train.epochs=1",
            f"output={tmp_path}",
        ],
    )
    trainer = TransferTrainer(config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.run()
    after = trainer.model.state_dict()
    assert summary.steps == 4 and summary.best_checkpoint.is_file()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])
    assert isinstance(trainer.optimizer, __import__("timm").optim.Lars)


@needs_fashion_mnist
def test_finetuning_on_fashion_mnist_learns_well_above_chance(tmp_path, capsys):
    """Real data: a small ViT (7x7 patches) trained from scratch for 300 steps on 4,800 Fashion-MNIST images
    classifies the first 1,000 test images far better than chance (10%); a short recipe without augmentation,
    since the paper recipe's regularization needs far longer schedules."""
    args = [
        "finetune",
        "--output",
        str(tmp_path / "ft"),
        *SMALL_VIT,
        "model.args.patch_size=7",
        "data.train_limit=4800",
        "data.val_limit=1000",
        "data.crop_scale=[1.0,1.0]",
        "augment.rand_augment=null",
        "augment.mixup=0",
        "augment.cutmix=0",
        "augment.random_erase=0",
        "augment.label_smoothing=0",
        "optim.base_lr=8e-3",
        "optim.layer_decay=1.0",
        "optim.weight_decay=0",
        "optim.warmup_epochs=0.2",
        "train.drop_path=0",
        "train.batch_size=32",
        "train.epochs=2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    top1 = float(out.split("done: ")[1].split("val top-1 ")[1].split("%")[0])
    assert top1 > 45, out
    assert (tmp_path / "ft" / "checkpoints" / "best.safetensors").is_file()


@needs_fashion_mnist
def test_knn_on_frozen_features_runs_end_to_end(tmp_path, capsys):
    result = tmp_path / "knn.json"
    args = ["knn", "--output", str(result), *SMALL_VIT, "data.train_limit=2000", "data.val_limit=500"]
    assert main(args) == 0
    top1 = json.loads(result.read_text())["top1"]
    assert math.isfinite(top1) and top1 > 40  # random features of Fashion-MNIST still cluster by class


def test_an_mr_mae_checkpoint_gives_its_encoder_without_its_teacher(tmp_path):
    """Transfer reads only the student: the teacher file an MR-MAE checkpoint names may be gone."""
    from tests.teacher_files import save_tiny_vit_teacher, tiny_vit_teacher_config

    teacher = save_tiny_vit_teacher(tmp_path / "teacher.safetensors")
    model = mimkit.create_model(
        "mrmae_vit_tiny", embed_dim=32, depth=2, num_heads=2, teacher=tiny_vit_teacher_config(teacher)
    )
    record = {"model": {"name": "mrmae_vit_tiny", "args": {}}, "resolved_model": to_dict(model.config)}
    path = save_checkpoint(tmp_path / "mrmae.safetensors", model, record)
    teacher.unlink()
    encoder = load_encoder("mrmae_vit_tiny", {}, path)
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in model.encoder.state_dict().items())


@pytest.fixture(params=["installed", "generated"])
def fashion_mnist_args(request, tmp_path) -> list[str]:
    """No data arguments at all where Fashion-MNIST is installed; else files in its format (28 px, grayscale)."""
    if request.param == "installed":
        if not FASHION_MNIST_DIR.is_dir():
            pytest.skip(f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
        return []
    return [f"data.train_path={write_fashion_mnist_files(tmp_path / 'idx')}"]


@pytest.mark.parametrize("command", ["finetune", "linprobe", "knn"])
def test_every_transfer_command_runs_with_its_defaults(command, fashion_mnist_args, tmp_path, capsys):
    """The documented no-argument jobs (a random tiny ViT whose 7-px patches tile Fashion-MNIST's 28 px), cut short."""
    output = tmp_path / ("knn.json" if command == "knn" else "run")
    cut = ["data.train_limit=128", "data.val_limit=64", *([] if command == "knn" else ["train.max_steps=2"])]
    assert main([command, "--output", str(output), *fashion_mnist_args, *cut]) == 0
    assert ("kNN: top-1" if command == "knn" else "done: 2 steps") in capsys.readouterr().out


def test_transfer_runs_take_the_checkpoints_model_and_input_format(tmp_path, capsys):
    """An RGB 64-px pretraining checkpoint of a custom-sized ViT: a probe builds that encoder for RGB 64-px input
    with the run's normalization (all printed), loads its weights and records all of it; explicit values win."""
    checkpoint = pretrain_checkpoint(tmp_path / "pre", *tiny_overrides(tmp_path / "pre"))
    capsys.readouterr()
    probe = tmp_path / "probe"
    images = write_labelled_images(tmp_path / "images")
    args = ["linprobe", "--checkpoint", str(checkpoint), "--output", str(probe), *images, "data.num_workers=0"]
    assert main([*args, "train.batch_size=4", "train.max_steps=1"]) == 0
    taken = capsys.readouterr().out.splitlines()[0]
    assert taken == (
        f"from {checkpoint}: model.name=mae_vit_tiny_patch16, data.img_size=64, data.in_chans=3, "
        f"data.mean={list(IMAGENET_MEAN)}, data.std={list(IMAGENET_STD)}; its encoder's embed_dim=32, depth=2, "
        "num_heads=2"
    )
    record = load_checkpoint(probe / "checkpoints" / "last.safetensors")
    assert record.config["model"]["name"] == "mae_vit_tiny_patch16"
    assert (record.config["data"]["img_size"], record.config["data"]["in_chans"]) == (64, 3)
    assert record.config["resolved_model"]["embed_dim"] == 32 and record.config["resolved_model"]["img_size"] == 64
    pretrained = load_checkpoint(checkpoint).model
    assert all(torch.equal(v, pretrained[k]) for k, v in record.model.items() if k.startswith("encoder."))

    explicit = load_knn_config(None, [f"model.checkpoint={checkpoint}", "data.img_size=32", "data.mean=[0,0,0]"])
    assert (explicit.data.img_size, explicit.data.mean, explicit.data.in_chans) == (32, [0, 0, 0], 3)
    assert "data.img_size" not in capsys.readouterr().out
    assert main(["knn", "--checkpoint", str(checkpoint), "model.name=convmae_tiny"]) == 2
    assert capsys.readouterr().err == (
        f"error: model.name 'convmae_tiny' is not the model of {checkpoint} ('mae_vit_tiny_patch16'): "
        "set model.name=mae_vit_tiny_patch16 or leave it out\n"
    )


def test_a_convmae_transfer_checkpoint_records_convmae_and_exports_its_encoder(tmp_path, capsys):
    """Fine-tuning a ConvMAE checkpoint records ConvMAE and its resolved encoder, so the fine-tuned encoder exports
    to timm at its own size; `visualize` says it needs a pretraining checkpoint."""
    pretraining = ["model.name=convmae_tiny", "data.img_size=32", "data.samples_per_epoch=8", "data.num_workers=0"]
    checkpoint = pretrain_checkpoint(tmp_path / "pre", *pretraining, "train.batch_size=8")
    run, images_root = tmp_path / "ft", tmp_path / "images"
    images = write_labelled_images(images_root)
    args = ["finetune", "--checkpoint", str(checkpoint), "--output", str(run), *images, "data.num_workers=0"]
    assert main([*args, "train.batch_size=4", "train.max_steps=1"]) == 0
    finetuned = run / "checkpoints" / "last.safetensors"
    record = load_checkpoint(finetuned)
    assert record.config["model"]["name"] == "convmae_tiny"
    assert record.config["resolved_model"]["embed_dims"] == [32, 64, 128]

    exported = tmp_path / "encoder.safetensors"
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(finetuned), "--output", str(exported)]) == 0
    assert "timm.create_model('mimkit_convvit_tiny'" in capsys.readouterr().out
    with safe_open(str(exported), framework="pt") as handle:
        fields = json.loads(handle.metadata()["fields"])
    assert fields["img_size"] == 32
    overlay = {"file": str(exported)}
    timm_model = timm.create_model("mimkit_convvit_tiny", pretrained=True, pretrained_cfg_overlay=overlay, **fields)
    encoder = {k.removeprefix("encoder."): v for k, v in record.model.items() if k.startswith("encoder.")}
    assert all(torch.equal(v, encoder[k]) for k, v in timm_model.encoder.state_dict().items())

    picture = str(tmp_path / "grid.png")
    assert main(["visualize", "--checkpoint", str(finetuned), "--images", str(images_root), "--output", picture]) == 2
    assert "is a finetune checkpoint" in capsys.readouterr().err
