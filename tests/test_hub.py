"""Models in and out: ``create_model(pretrained=)``, ``load_checkpoint``, ``list_models(pattern)`` and the Hugging
Face Hub folder layout (``save_pretrained`` / ``from_pretrained``, offline), strict by default."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import mimkit
from mimkit.cli import main
from mimkit.config_schema import to_dict
from mimkit.engine.checkpoint import load_checkpoint as read_checkpoint
from mimkit.engine.checkpoint import save_checkpoint
from mimkit.errors import CheckpointError, MimkitError, NonFiniteError
from mimkit.eval.classifier import Classifier
from mimkit.methods.convmae import ConvMAE
from mimkit.methods.mae import MAE
from tests.conftest import TINY_MODEL
from tests.teacher_files import TINY_MAE_ARGS, save_tiny_mae_checkpoint
from tests.transfer_files import pretrain_checkpoint

SMALL_MAE = TINY_MAE_ARGS
FAMILIES = [
    pytest.param("mae_vit_tiny_patch16", SMALL_MAE, 64, id="mae"),
    pytest.param("convmae_tiny", {"img_size": 64}, 64, id="convmae"),
]


def _outputs(model, size: int) -> dict[str, torch.Tensor]:
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    noise = model.sample_noise(2, (size, size), torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(images, noise=noise)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("name, overrides, size", FAMILIES)
def test_save_pretrained_round_trip_gives_bit_identical_outputs(tmp_path, name, overrides, size):
    torch.manual_seed(0)
    model = mimkit.create_model(name, **overrides)
    model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_name"] == name and config["mimkit_version"] == mimkit.__version__
    assert config["model_config"] == json.loads(json.dumps(to_dict(model.config)))

    loaded = type(model).from_pretrained(tmp_path / "model")
    generic = mimkit.from_pretrained(str(tmp_path / "model"))
    created = mimkit.create_model(name, pretrained=tmp_path / "model")
    assert type(loaded) is type(model) and type(generic) is type(model) and not loaded.training
    _assert_same_weights(loaded.state_dict(), model.state_dict())
    expected = _outputs(model, size)
    for other in (loaded, generic, created):
        got = _outputs(other, size)
        assert torch.equal(got["loss"], expected["loss"]) and torch.equal(got["pred"], expected["pred"])
    card = (tmp_path / "model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mimkit") and f"# {name}" in card and "arxiv.org/abs/" in card


def test_a_model_built_from_its_config_class_is_saved_under_the_closest_registered_name(tmp_path):
    MAE(mimkit.model_config("mae_vit_small_patch16", depth=2, img_size=32)).save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_name"] == "mae_vit_small_patch16"
    assert mimkit.from_pretrained(tmp_path / "model").config.depth == 2


def test_from_pretrained_refuses_another_class_a_used_folder_and_an_unreachable_repo(tmp_path):
    mimkit.create_model("mae_vit_tiny_patch16", **SMALL_MAE).save_pretrained(tmp_path / "mae")
    with pytest.raises(MimkitError, match="holds a MAE .'mae_vit_tiny_patch16'., not a ConvMAE"):
        ConvMAE.from_pretrained(tmp_path / "mae")
    with pytest.raises(MimkitError, match="is a folder that is not empty"):
        mimkit.create_model("mae_vit_tiny_patch16", **SMALL_MAE).save_pretrained(tmp_path / "mae")
    with pytest.raises(MimkitError, match="its Hub repository could not be fetched"):
        MAE.from_pretrained("nobody/no-such-model", local_files_only=True)


def test_a_pretraining_run_loads_as_the_model_it_trained_and_exports_to_the_hub_layout(tmp_path, capsys):
    """``create_model(pretrained=checkpoint)`` rebuilds the run's model (its 64 px, 32-wide config) with the run's
    weights; ``mimkit export --format hub`` writes the folder with the run's recipe and metrics in the card."""
    checkpoint = pretrain_checkpoint(tmp_path / "run", *TINY_MODEL, "data.source=samples", "data.img_size=64")
    stored = read_checkpoint(checkpoint)
    model = mimkit.create_model("mae_vit_tiny_patch16", pretrained=checkpoint)
    assert model.config.img_size == 64 and model.config.embed_dim == 32 and model.load_report.complete
    _assert_same_weights(model.state_dict(), stored.model)
    encoder = mimkit.create_encoder("mae_vit_tiny_patch16", pretrained=checkpoint)
    _assert_same_weights(encoder.state_dict(), model.encoder_module().state_dict())

    loaded = mimkit.load_checkpoint(checkpoint)
    assert isinstance(loaded.model, MAE) and loaded.kind == "pretraining" and loaded.run["step"] == 1
    assert loaded.model_config == json.loads(json.dumps(stored.config["resolved_model"]))

    capsys.readouterr()
    folder = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hub", "--output", str(folder)]) == 0
    assert "mimkit.from_pretrained" in capsys.readouterr().out
    _assert_same_weights(mimkit.from_pretrained(folder).state_dict(), stored.model)
    card = (folder / "README.md").read_text()
    last_loss = stored.config["last_loss"]
    for fact in ("| source | samples |", "| image size | 64 |", "| optimizer steps done | 1 |", f"| {last_loss} |"):
        assert fact in card
    assert json.loads((folder / "config.json").read_text())["run"]["config"]["data"]["img_size"] == 64


def test_strict_loading_names_the_missing_keys_and_strict_false_reports_them(tmp_path):
    """An encoder-only file (``mimkit export``) does not fill a pretraining model: strict loading names the missing
    decoder tensors; ``strict=False`` loads the encoder, warns, and reports what was left out."""
    _, source = save_tiny_mae_checkpoint(tmp_path / "pre.safetensors")
    export = tmp_path / "encoder.safetensors"
    assert main(["export", "--checkpoint", str(tmp_path / "pre.safetensors"), "--output", str(export)]) == 0

    with pytest.raises(CheckpointError, match="missing 'decoder.mask_token'.*strict=False loads the tensors that fit"):
        mimkit.create_model("mae_vit_tiny_patch16", pretrained=export)
    with pytest.warns(UserWarning, match="missing"):
        model = mimkit.create_model("mae_vit_tiny_patch16", pretrained=export, strict=False)
    report = model.load_report
    assert "decoder.pred.weight" in report.missing and not any(k.startswith("encoder.") for k in report.missing)
    assert set(report.unexpected) == {"fc_norm.weight", "fc_norm.bias"}  # the timm wrapper's pooling norm
    _assert_same_weights(model.encoder_module().state_dict(), source.encoder_module().state_dict())

    encoder = mimkit.create_encoder("mae_vit_tiny_patch16", pretrained=export)
    assert encoder.load_report.complete
    _assert_same_weights(encoder.state_dict(), source.encoder_module().state_dict())
    assert mimkit.load_checkpoint(export).kind == "encoder"
    with pytest.raises(CheckpointError, match="holds a 'mae_vit_tiny_patch16' model, not 'convmae_tiny'"):
        mimkit.create_encoder("convmae_tiny", pretrained=export)


def test_the_cli_refuses_an_encoder_file_and_a_used_folder_in_one_line(tmp_path, capsys):
    pre, source = save_tiny_mae_checkpoint(tmp_path / "pre.safetensors")
    export = tmp_path / "encoder.safetensors"
    assert main(["export", "--checkpoint", str(pre), "--output", str(export)]) == 0
    capsys.readouterr()

    assert main(["export", "--checkpoint", str(export), "--format", "hub", "--output", str(tmp_path / "h")]) == 2
    assert "is an encoder exported by `mimkit export` (a VisionTransformerEncoder" in _one_error_line(capsys)
    assert main(["export", "--checkpoint", str(pre), "--format", "hub", "--output", str(tmp_path)]) == 2
    assert "is a folder that is not empty" in _one_error_line(capsys)
    assert main(["export", "--checkpoint", str(pre), "--format", "hub", "--output", str(pre)]) == 2
    assert f"--output {pre} is a file" in _one_error_line(capsys)
    assert read_checkpoint(pre).model.keys() == source.state_dict().keys()  # untouched


def test_a_fine_tuning_checkpoint_loads_as_its_classifier(tmp_path):
    torch.manual_seed(0)
    encoder = mimkit.create_encoder("mae_vit_tiny_patch16", **SMALL_MAE)
    classifier = Classifier(encoder, num_classes=3).eval()
    resolved = to_dict(mimkit.model_config("mae_vit_tiny_patch16", **SMALL_MAE))
    record = {
        "protocol": "finetune",
        "model": {"name": "mae_vit_tiny_patch16", "args": SMALL_MAE},
        "num_classes": 3,
        "resolved_model": resolved,
    }
    path = save_checkpoint(tmp_path / "best.safetensors", classifier, record)
    loaded = mimkit.load_checkpoint(path)
    assert isinstance(loaded.model, Classifier) and loaded.kind == "finetune"
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), classifier(images))
    from_classifier = mimkit.create_encoder("mae_vit_tiny_patch16", pretrained=path)
    _assert_same_weights(from_classifier.state_dict(), encoder.state_dict())


def _authors_mae_state(model) -> dict[str, torch.Tensor]:
    """``model``'s weights under the authors' MAE names (the mapping of :mod:`mimkit.official.mae`, reversed)."""
    renames = {"encoder.": "", "decoder.mask_token": "mask_token"}
    renames.update({f"decoder.{part}.": f"decoder_{part}." for part in ("embed", "blocks", "norm", "pred")})
    state = {}
    for key, value in model.state_dict().items():
        prefix = next(p for p in renames if key.startswith(p))
        state[renames[prefix] + key[len(prefix) :]] = value
    return state


def test_an_authors_checkpoint_loads_through_its_key_mapping(tmp_path):
    torch.manual_seed(0)
    source = mimkit.create_model("mae_vit_tiny_patch16", **SMALL_MAE)
    torch.save({"model": _authors_mae_state(source)}, tmp_path / "mae_visualize.pth")
    model = mimkit.create_model("mae_vit_tiny_patch16", pretrained=tmp_path / "mae_visualize.pth", **SMALL_MAE)
    _assert_same_weights(model.state_dict(), source.state_dict())
    loaded = mimkit.load_checkpoint(tmp_path / "mae_visualize.pth", "mae_vit_tiny_patch16", **SMALL_MAE)
    assert loaded.kind == "authors" and isinstance(loaded.model, MAE)
    with pytest.raises(CheckpointError, match="does not say which model it holds; name it"):
        mimkit.load_checkpoint(tmp_path / "mae_visualize.pth")

    encoder_only = {k: v for k, v in _authors_mae_state(source).items() if not k.startswith(("decoder", "mask"))}
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain.pth")
    with pytest.raises(CheckpointError, match=r"missing 'decoder.mask_token'.*and \d+ more"):
        mimkit.create_model("mae_vit_tiny_patch16", pretrained=tmp_path / "mae_pretrain.pth", **SMALL_MAE)
    encoder = mimkit.create_encoder("mae_vit_tiny_patch16", pretrained=tmp_path / "mae_pretrain.pth", **SMALL_MAE)
    _assert_same_weights(encoder.state_dict(), source.encoder_module().state_dict())


def test_list_models_filters_like_timm():
    assert mimkit.list_models("mae_*") == [name for name in mimkit.list_models() if name.startswith("mae_")]
    assert len(mimkit.list_models("mae_*")) == 5
    tiny = mimkit.list_models("*_tiny*")
    assert "convmae_tiny" in tiny and "mae_vit_tiny_patch16" in tiny and "convmae_base" not in tiny
    assert mimkit.list_models("convmae_[bs]*") == ["convmae_base", "convmae_base_star", "convmae_small"]
    assert mimkit.list_models("no_such_*") == []


@pytest.mark.parametrize(
    "rewrite, message",
    [
        pytest.param(lambda config: "{not json", "is not a readable JSON file", id="not-json"),
        pytest.param(lambda config: {**config, "format": "other"}, "is not a mimkit model config", id="format"),
        pytest.param(lambda config: {**config, "model_name": "mae_vit_gigantic"}, "unknown model", id="name"),
        pytest.param(lambda config: {**config, "model_config": []}, "'model_config' must be a JSON object", id="type"),
        pytest.param(
            lambda config: {**config, "model_config": {**config["model_config"], "depth": "two"}},
            "describes no model this mimkit builds",
            id="field",
        ),
    ],
)
def test_a_malformed_config_json_is_refused(tmp_path, rewrite, message):
    folder = tmp_path / "model"
    mimkit.create_model("mae_vit_tiny_patch16", **SMALL_MAE).save_pretrained(folder)
    config = rewrite(json.loads((folder / "config.json").read_text()))
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        mimkit.from_pretrained(folder)


def test_non_finite_weights_are_neither_saved_nor_loaded(tmp_path):
    model = mimkit.create_model("mae_vit_tiny_patch16", **SMALL_MAE)
    with torch.no_grad():
        model.encoder.norm.weight[0] = float("nan")
    with pytest.raises(NonFiniteError, match="'encoder.norm.weight' holds NaN or infinite values"):
        model.save_pretrained(tmp_path / "nan")
    assert not (tmp_path / "nan" / "model.safetensors").exists()

    folder = tmp_path / "inf"
    mimkit.create_model("mae_vit_tiny_patch16", **SMALL_MAE).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    weights["decoder.pred.bias"][3] = float("inf")
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="NaN or infinite values in tensor 'decoder.pred.bias'"):
        mimkit.from_pretrained(folder)
