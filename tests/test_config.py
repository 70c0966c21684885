"""Config validation: errors name the field and what it accepts; overrides and files round-trip."""

from __future__ import annotations

import pytest

from mimkit.cli import main
from mimkit.config_schema import ConfigError, apply_overrides, load_yaml
from mimkit.engine.config import load_pretrain_config


def test_defaults_and_overrides():
    config = load_pretrain_config(None, ["train.epochs=3", "optim.betas=[0.9, 0.99]", "model.args.mask_ratio=0.6"])
    assert config.train.epochs == 3
    assert config.optim.betas == (0.9, 0.99)
    assert config.model.args == {"mask_ratio": 0.6}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.epoch=3",
            r"unknown config field 'train.epoch' \(did you mean 'epochs'\?\); allowed: .*batch_size",
        ),
        ("train.batch_size=abc", "config field 'train.batch_size': expected an integer, got 'abc'"),
        (
            "data.source=imagenet",
            "config field 'data.source': expected one of 'samples', 'folder', 'fashion_mnist'",
        ),
        ("train.precision=fp8", "config field 'train.precision': expected one of 'fp32', 'bf16', 'fp16'"),
        ("optim.betas=[0.9]", r"config field 'optim.betas': expected a list of 2"),
        ("data.crop_scale=[0.9, 0.2]", "config section 'data': crop_scale must satisfy"),
        ("train.epochs=0", "config field 'train.epochs': must be at least 1, got 0"),
        ("epochs", "not of the form key=value"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(None, [override])


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pretrain_config(str(bad))
    with pytest.raises(ConfigError, match="config file not found"):
        load_pretrain_config(str(tmp_path / "missing.yaml"))


def test_override_of_a_value_by_a_section_is_refused():
    with pytest.raises(ConfigError, match="'output' is not a section"):
        apply_overrides({"output": "x"}, ["output.dir=y"])


def test_cli_reports_config_errors_without_traceback(capsys, tmp_path):
    code = main(["pretrain", "--output", str(tmp_path), "train.batchsize=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config field 'train.batchsize'" in err
    assert "Traceback" not in err


def test_cli_reports_bad_model_args(capsys, tmp_path):
    code = main(["pretrain", "--output", str(tmp_path), "model.args.depth=-x"])
    assert code == 2
    assert "config field 'model.args.depth': expected an integer" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:for .* copying from a non-meta parameter:UserWarning")
def test_shipped_configs_validate(tmp_path):
    """Every pretraining recipe builds its model (absent teacher files replaced by a test teacher); every
    transfer recipe builds its classifier."""
    from pathlib import Path

    import torch

    from mimkit.engine.pretrain import build_pretrain_model
    from mimkit.eval.classifier import Classifier
    from mimkit.eval.config import load_transfer_config
    from mimkit.eval.loading import load_encoder
    from tests.teacher_files import with_test_teachers

    root = Path(__file__).parent.parent / "mimkit" / "configs"
    pretraining = sorted(p for p in root.rglob("*.yaml") if p.parent.name not in ("finetune", "detect", "segment"))
    transfer = sorted((root / "finetune").glob("*.yaml"))
    assert pretraining and transfer
    for path in pretraining:
        config = with_test_teachers(load_pretrain_config(str(path)), tmp_path)
        with torch.device("meta"):
            build_pretrain_model(config)
    for path in transfer:
        config = load_transfer_config(load_yaml(str(path))["protocol"], str(path))
        args = {**config.model.args, "img_size": config.data.img_size, "in_chans": config.data.in_chans}
        with torch.device("meta"):
            Classifier(load_encoder(config.model.name, args), 10, config.protocol == "linprobe")


@pytest.mark.parametrize(
    "command",
    [["pretrain", "data.source=samples"], ["finetune"], ["linprobe"]],
    ids=["pretrain", "finetune", "linprobe"],
)
def test_warmup_as_long_as_the_run_is_refused(command, tmp_path, capsys):
    """A warm-up of the whole run never reaches the peak learning rate (the schedule used to clamp it silently)."""
    args = [*command, "train.epochs=3", "optim.warmup_epochs=3", f"output={tmp_path / 'run'}"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "optim.warmup_epochs (3) must be shorter than train.epochs (3)" in line
    assert not (tmp_path / "run").exists()


def test_warmup_left_out_is_a_tenth_of_the_run():
    assert load_pretrain_config(None, ["train.epochs=30"]).optim.warmup_epochs == 3
    assert load_pretrain_config(None, ["train.epochs=30", "optim.warmup_epochs=0"]).optim.warmup_epochs == 0
