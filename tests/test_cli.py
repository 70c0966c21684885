"""The command line as a user meets it: fast answers without torch, one-line errors with exit code 2, numbers
range-checked with the field named, safe YAML, packaged recipes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mimkit.cli import main
from mimkit.config_paths import PACKAGED_CONFIGS, packaged_configs, resolve_config_path
from mimkit.config_schema import MAX_CONFIG_NODES, ConfigError
from mimkit.engine.config import load_pretrain_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def _python(*args: str, cwd: Path = REPO_ROOT, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(extra_path or REPO_ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_help_version_and_config_errors_answer_without_importing_torch():
    """What makes ``--help`` and a config mistake take 15 s is importing torch, timm and torchvision first."""
    script = (
        "import sys\n"
        "from mimkit.cli import main\n"
        "for argv in (['--help'], ['--version'], ['pretrain', '--help'], ['finetune', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0, argv\n"
        "assert main(['pretrain', 'train.epochs=0']) == 2\n"
        "assert main(['finetune', 'optim.base_lr=-1']) == 2\n"
        "assert main(['pretrain', '--config', 'mae/vit_base_800ep', 'model.args.mask_ratio=0']) == 2\n"
        "assert main(['pretrain', 'data.img_size=50']) == 2\n"
        "loaded = sorted(m for m in ('torch', 'timm', 'torchvision', 'numpy') if m in sys.modules)\n"
        "print('heavy modules:', loaded)\n"
    )
    result = _python("-c", script)
    assert result.returncode == 0, result.stderr
    assert "heavy modules: []" in result.stdout


def test_python_dash_m_mimkit_runs_the_command_line():
    result = _python("-m", "mimkit", "--version")
    assert result.returncode == 0 and result.stdout.startswith("mimkit ")
    result = _python("-m", "mimkit", "pretrain", "train.batch_size=0")
    assert result.returncode == 2
    assert result.stderr == "error: config field 'train.batch_size': must be at least 1, got 0\n"


def test_overrides_may_follow_options(capsys, tmp_path):
    """``key=value`` after an option used to end in argparse's 'unrecognized arguments'."""
    assert main(["pretrain", "--output", str(tmp_path / "run"), "train.epochs=0"]) == 2
    assert "config field 'train.epochs'" in _error_line(capsys)
    assert main(["finetune", "--output", str(tmp_path / "ft"), "train.epochs=0", "--config", "x"]) == 2
    assert "config 'x' is neither a file nor a packaged recipe" in _error_line(capsys)


def test_a_bad_command_line_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", "--no-such-option"])
    assert stop.value.code == 2
    assert "unrecognized arguments: --no-such-option (see `mimkit pretrain --help`)" in _error_line(capsys)
    with pytest.raises(SystemExit) as stop:
        main(["export", "--checkpoint", "a", "--output", "b", "train.epochs=1"])
    assert stop.value.code == 2
    assert "unrecognized arguments: train.epochs=1" in _error_line(capsys)
    with pytest.raises(SystemExit) as stop:
        main(["pretrian"])
    assert stop.value.code == 2
    assert "invalid choice: 'pretrian'" in _error_line(capsys)


@pytest.mark.parametrize(
    ("command", "override", "field"),
    [
        ("pretrain", "optim.clip_grad=-1", "optim.clip_grad"),
        ("pretrain", "optim.base_lr=.inf", "optim.base_lr"),
        ("pretrain", "optim.base_lr=.nan", "optim.base_lr"),
        ("pretrain", "optim.base_lr=0", "optim.base_lr"),
        ("pretrain", "optim.base_lr=-1e-3", "optim.base_lr"),
        ("pretrain", "optim.weight_decay=-0.05", "optim.weight_decay"),
        ("pretrain", "optim.warmup_epochs=-1", "optim.warmup_epochs"),
        ("pretrain", "optim.min_lr=-1", "optim.min_lr"),
        ("pretrain", "optim.betas=[0.9, 1.0]", "optim.betas"),
        ("pretrain", "train.max_steps=0", "train.max_steps"),
        ("pretrain", "train.seed=-1", "train.seed"),
        ("pretrain", "train.accum_steps=0", "train.accum_steps"),
        ("pretrain", "train.checkpoint_every=-5", "train.checkpoint_every"),
        ("pretrain", "data.samples_per_epoch=0", "data.samples_per_epoch"),
        ("pretrain", "data.img_size=0", "data.img_size"),
        ("pretrain", "data.std=[0, 1, 1]", "data.std"),
        ("pretrain", "data.mean=[.nan, 0, 0]", "data.mean"),
        ("pretrain", "data.num_workers=-1", "data.num_workers"),
        ("pretrain", "data.crop_scale=[0, 1]", "data.crop_scale"),
        ("pretrain", "model.args.mask_ratio=0", "model.args.mask_ratio"),
        ("pretrain", "model.args.mask_ratio=1", "model.args.mask_ratio"),
        ("pretrain", "model.args.patch_size=0", "model.args.patch_size"),
        ("pretrain", "model.args.depth=0", "model.args.depth"),
        ("pretrain", "model.args.drop_path_rate=1.5", "model.args.drop_path_rate"),
        ("finetune", "augment.mixup=-1", "augment.mixup"),
        ("finetune", "augment.label_smoothing=1", "augment.label_smoothing"),
        ("finetune", "augment.random_erase=2", "augment.random_erase"),
        ("finetune", "train.drop_path=1", "train.drop_path"),
        ("finetune", "optim.layer_decay=0", "optim.layer_decay"),
        ("linprobe", "optim.momentum=-0.9", "optim.momentum"),
        ("finetune", "data.label_fraction=0", "data.label_fraction"),
        ("finetune", "data.train_limit=0", "data.train_limit"),
        ("finetune", "train.eval_every=-1", "train.eval_every"),
        ("knn", "k=0", "k"),
        ("knn", "temperature=0", "temperature"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_field(capsys, command, override, field):
    assert main([command, override]) == 2
    line = _error_line(capsys)
    assert f"config field '{field}': must be" in line, line


def test_the_model_and_data_sections_are_checked_together_before_any_work(capsys):
    """An image size the model cannot tile, or model inputs that disagree with the data, fail at config time."""
    assert main(["pretrain", "data.img_size=50"]) == 2
    assert "img_size=50 must be a multiple of 16" in _error_line(capsys)
    assert main(["pretrain", "model.args.in_chans=1"]) == 2
    assert "model.args.in_chans=1 disagrees with data.in_chans=3" in _error_line(capsys)


def test_shipped_recipes_hold_no_number_out_of_range():
    for name, _ in packaged_configs():
        if not name.startswith(("finetune/", "detect/", "segment/")):
            load_pretrain_config(resolve_config_path(name))


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    config = tmp_path / "dup.yaml"
    config.write_text("train:\n  epochs: 2\n  batch_size: 8\n  epochs: 400\n")
    assert main(["pretrain", "--config", str(config)]) == 2
    assert "duplicate key 'epochs' at line 4" in _error_line(capsys)


def test_yaml_merge_keys_still_work(tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text("base: &base {epochs: 3, batch_size: 8}\ntrain:\n  <<: *base\n  epochs: 5\n")
    with pytest.raises(ConfigError, match="unknown config field 'base'"):
        load_pretrain_config(str(config))
    config.write_text("train: &t {epochs: 3, batch_size: 8}\n")
    assert load_pretrain_config(str(config)).train.epochs == 3


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    """Nine levels of nine aliases stand for 9**9 = 387 million values in 300 bytes."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 10):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 600
    assert main(["pretrain", "--config", str(bomb)]) == 2
    assert f"expands to more than {MAX_CONFIG_NODES:,} values" in _error_line(capsys)
    assert main(["pretrain", f"train.epochs={bomb.read_text().splitlines()[1]}"]) == 2


def test_config_files_that_are_not_configs_are_refused(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    assert main(["pretrain", "--config", str(big)]) == 2
    assert "larger than 1024 KiB" in _error_line(capsys)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00model")
    assert main(["pretrain", "--config", str(binary)]) == 2
    assert "not UTF-8 text" in _error_line(capsys)
    assert main(["pretrain", "--config", str(tmp_path)]) == 2
    assert "is a folder" in _error_line(capsys)


def test_mimkit_configs_lists_every_packaged_recipe(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    names = [name for name, _ in packaged_configs()]
    assert len(names) == len(list(PACKAGED_CONFIGS.rglob("*.yaml"))) > 40
    assert all(name in out for name in names)
    assert re.search(r"^mae/vit_tiny_samples +The Quick start job", out, re.MULTILINE)
    assert resolve_config_path("mae/vit_base_800ep") == str(PACKAGED_CONFIGS / "mae" / "vit_base_800ep.yaml")


def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert main(["pretrain", "--output", str(tmp_path / "run"), "train.device=cuda"]) == 2
    assert "train.device is 'cuda' but no CUDA device is visible" in _error_line(capsys)


def test_a_plain_install_ships_the_recipes(tmp_path):
    """``pip install .`` (not editable) must carry the recipes the README names (it used to ship no configs/)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "mimkit", source / "mimkit", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    install = [
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-compile",
        "--target",
        str(target),
        str(source),
    ]
    result = _python(*install, cwd=tmp_path)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    shutil.rmtree(source)
    check = "from mimkit.config_paths import resolve_config_path; print(resolve_config_path('mae/vit_tiny_samples'))"
    result = _python("-c", check, cwd=tmp_path, extra_path=target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target / "mimkit" / "configs" / "mae" / "vit_tiny_samples.yaml")
