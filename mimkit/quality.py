"""The quality benchmark (``mimkit bench --quality``): what pretraining buys on Fashion-MNIST.

Each method's config under ``<method>/*_quality_fashion_mnist`` is pretrained on the 60k training
images without labels for a fixed budget of optimizer steps. At several points of that run (step 0 = the random
init) the frozen encoder is scored by weighted kNN and a linear probe on the 10k test images, and the pretraining
model by its masked-reconstruction loss on held-out test images under fixed masks. At the end the whole encoder is
fine-tuned with 1% and 10% of the training labels, from the pretrained weights and from a random init, with the
same recipe (``finetune/quality_fashion_mnist``). A linear classifier on raw pixels is the baseline.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

from mimkit.config_paths import resolve_config_path
from mimkit.data import FashionMNIST, ImageSource, eval_transform, load_readable
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.checkpoint_checks import load_model_state
from mimkit.engine.config import PretrainConfig, load_pretrain_config
from mimkit.engine.pretrain import Pretrainer, build_pretrain_model, pretrain
from mimkit.errors import MimkitError
from mimkit.eval.config import load_transfer_config
from mimkit.eval.data import balanced_label_subset, class_balanced_limit
from mimkit.eval.knn import knn_predict, normalized_features
from mimkit.eval.transfer import TransferTrainer
from mimkit.methods.base import PretrainingModel

METHOD_CONFIGS = {
    "mae": "mae/vit_quality_fashion_mnist",
    "convmae": "convmae/convmae_tiny_quality_fashion_mnist",
    "mixmae": "mixmae/mixmae_vit_quality_fashion_mnist",
    "localmim": "localmim/localmim_vit_quality_fashion_mnist",
}
"""The pretraining recipe of each benchmarked method. MR-MAE is left out: its CLIP/DINO teachers cannot be
downloaded here, and a supervised ImageNet teacher would not make a self-supervised comparison."""
FINETUNE_CONFIG = "finetune/quality_fashion_mnist"
FEATURE_BATCH = 256


@dataclass
class QualitySettings:
    """What the benchmark runs; the defaults are the documented full run."""

    steps: int | None = None
    """Pretraining steps per method; None: the configs' own budget (epochs x samples_per_epoch / batch)."""
    eval_points: tuple[int, ...] | None = None
    """Pretraining steps at which the frozen encoder is scored; None: 0, 1/4, 1/2 and all of ``steps``."""
    finetune_steps: int = 300
    label_fractions: tuple[float, ...] = (0.01, 0.1)
    recon_images: int = 2000
    """Held-out test images (the first ones) for the masked-reconstruction loss."""
    knn_k: int = 20
    probe_iterations: int = 100
    probe_l2: float = 1e-4
    train_images: int | None = None
    """Use only N training images (class-balanced, seeded) for kNN, the probe and the label subsets (None: all
    60k)."""
    test_images: int | None = None
    """Score on N test images only (class-balanced, seeded; None: all 10k)."""
    data_path: str | None = None
    """The Fashion-MNIST idx folder (None: Debian's location)."""
    seed: int = 0
    pretrain_overrides: tuple[str, ...] = ()
    """Extra ``key=value`` overrides of every pretraining config (smaller models in tests)."""
    finetune_overrides: tuple[str, ...] = ()


@dataclass
class PointResult:
    step: int
    knn_top1: float
    probe_top1: float
    recon_loss: float


@dataclass
class MethodResult:
    method: str
    config: str
    model: str
    steps: int
    points: list[PointResult] = field(default_factory=list)
    finetune: dict[str, dict[str, float]] = field(default_factory=dict)
    """``{"1%": {"pretrained": top1, "random": top1}, ...}``."""
    pretrain_seconds: float = 0.0
    seconds: float = 0.0


@dataclass
class QualityReport:
    methods: list[MethodResult]
    raw_pixel_probe_top1: float
    settings: QualitySettings
    seconds: float = 0.0


def check_methods(methods: Sequence[str]) -> list[str]:
    """The requested methods, or a :class:`MimkitError` naming the unknown ones and what is accepted."""
    unknown = [m for m in methods if m not in METHOD_CONFIGS]
    if unknown:
        hint = " (MR-MAE needs CLIP/DINO teachers that cannot be downloaded here)" if "mrmae" in unknown else ""
        raise MimkitError(
            f"unknown quality-benchmark method(s) {', '.join(unknown)}{hint}; choose from {', '.join(METHOD_CONFIGS)}"
        )
    return list(methods)


def budget_steps(config: PretrainConfig) -> int:
    """Optimizer steps of a whole pretraining run of ``config`` (one process)."""
    return config.train.epochs * (config.data.samples_per_epoch // (config.train.batch_size * config.train.accum_steps))


def eval_schedule(steps: int, points: Sequence[int] | None) -> list[int]:
    """Sorted evaluation points; the last is always ``steps`` (low-label fine-tuning starts there)."""
    if steps < 1:
        raise MimkitError(f"the pretraining budget must be at least 1 step, got {steps}")
    chosen = {0, steps // 4, steps // 2} if points is None else set(points)
    bad = [p for p in chosen if not 0 <= p <= steps]
    if bad:
        raise MimkitError(f"evaluation points {sorted(bad)} are outside the pretraining run (0..{steps} steps)")
    return sorted(chosen | {steps})


def method_config(method: str, settings: QualitySettings, output: Path) -> PretrainConfig:
    """The method's pretraining config writing under ``output``; ``settings.steps`` rescales the epoch length so
    the schedule (warm-up share, cosine) spans exactly that many steps."""
    overrides = [f"output={output}", f"train.seed={settings.seed}", *settings.pretrain_overrides]
    if settings.data_path:
        overrides.append(f"data.path={settings.data_path}")
    config = load_pretrain_config(resolve_config_path(METHOD_CONFIGS[method]), overrides)
    if settings.steps is not None:
        per_epoch = math.ceil(settings.steps / config.train.epochs)
        images = per_epoch * config.train.batch_size * config.train.accum_steps
        config = load_pretrain_config(
            resolve_config_path(METHOD_CONFIGS[method]),
            [*overrides, f"data.samples_per_epoch={images}", f"train.max_steps={settings.steps}"],
        )
    return config


def labelled_split(settings: QualitySettings, split: str, limit: int | None) -> ImageSource:
    """Fashion-MNIST's ``split``; when ``limit`` is set, that many of its images, class-balanced and drawn with
    the benchmark's seed (the subset fine-tuning's ``data.train_limit``/``val_limit`` then picks too)."""
    source = FashionMNIST(settings.data_path, split)
    option = "--train-images" if split == "train" else "--test-images"
    return class_balanced_limit(source, limit, settings.seed, option) if limit else source


def transformed_split(
    settings: QualitySettings, split: str, limit: int | None, transform
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of the split through ``transform`` as one tensor (computed once, scored at every point),
    and the labels."""
    source = labelled_split(settings, split, limit)
    images, _ = load_readable(source, transform)
    return images, torch.as_tensor(source.labels)


@torch.no_grad()
def reconstruction_loss(model: PretrainingModel, images: torch.Tensor, noise: torch.Tensor) -> float:
    """The model's masked-reconstruction loss on ``images`` under fixed ``noise``, averaged over images."""
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(images), FEATURE_BATCH):
        batch = images[start : start + FEATURE_BATCH].to(device)
        total += model(batch, noise=noise[start : start + FEATURE_BATCH].to(device))["loss"].item() * len(batch)
    return total / len(images)


def linear_probe_top1(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    iterations: int = 100,
    l2: float = 1e-4,
) -> float:
    """Top-1 (%) of a multinomial logistic regression on fixed features: standardized with the training
    statistics, trained full-batch by L-BFGS (strong Wolfe line search) from zero weights; deterministic."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(train_y.max()) + 1
    layer = nn.Linear(train_x.shape[1], classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(train_x), train_y) + l2 * layer.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return 100 * (layer(test_x).argmax(1) == test_y).float().mean().item()


def knn_top1(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, k: int) -> float:
    """Top-1 (%) of the weighted kNN vote (cosine, temperature 0.07) on L2-normalized features."""
    scores = knn_predict(train_f, train_y, test_f, int(train_y.max()) + 1, k=k)
    return 100 * (scores.argmax(1) == test_y).float().mean().item()


def raw_pixel_probe(settings: QualitySettings) -> float:
    """The baseline: the linear-probe recipe on raw 28x28 pixels (scaled to [0, 1], then standardized)."""
    train_x, train_y = transformed_split(settings, "train", settings.train_images, T.ToTensor())
    test_x, test_y = transformed_split(settings, "test", settings.test_images, T.ToTensor())
    return linear_probe_top1(
        train_x.flatten(1), train_y, test_x.flatten(1), test_y, settings.probe_iterations, settings.probe_l2
    )


class PointEvaluator:
    """Scores a pretraining model at one point of its run: kNN and linear probe on the frozen encoder's pooled
    features (training split -> test split) and the masked-reconstruction loss on held-out test images."""

    def __init__(self, config: PretrainConfig, settings: QualitySettings) -> None:
        data = config.data
        self.settings = settings
        transform = eval_transform(data.img_size, data.in_chans, data.mean, data.std)
        self.train_images, self.train_labels = transformed_split(settings, "train", settings.train_images, transform)
        self.test_images, self.test_labels = transformed_split(settings, "test", settings.test_images, transform)
        self.recon_images = self.test_images[: settings.recon_images]
        self.noise_seed = config.train.seed + 1

    def __call__(self, model: PretrainingModel, step: int) -> PointResult:
        encoder = model.encoder_module().eval()
        device = next(model.parameters()).device
        train_f, test_f = (
            torch.cat([normalized_features(encoder, batch, device) for batch in images.split(FEATURE_BATCH)])
            for images in (self.train_images, self.test_images)
        )
        train_y, test_y = self.train_labels, self.test_labels
        generator = torch.Generator().manual_seed(self.noise_seed)
        noise = model.sample_noise(len(self.recon_images), tuple(self.recon_images.shape[-2:]), generator)
        return PointResult(
            step=step,
            knn_top1=knn_top1(train_f, train_y, test_f, test_y, self.settings.knn_k),
            probe_top1=linear_probe_top1(
                train_f, train_y, test_f, test_y, self.settings.probe_iterations, self.settings.probe_l2
            ),
            recon_loss=reconstruction_loss(model, self.recon_images, noise),
        )


def load_pretrained(config: PretrainConfig, checkpoint: Path) -> PretrainingModel:
    """The pretraining model of ``config`` with the weights of ``checkpoint``."""
    model = build_pretrain_model(config)
    load_model_state(model, load_checkpoint(checkpoint).model, checkpoint)
    return model


def finetune_top1(
    config: PretrainConfig,
    checkpoint: Path | None,
    fraction: float,
    settings: QualitySettings,
    output: Path,
) -> float:
    """Fine-tune the whole encoder (``checkpoint``'s weights, or a random init when None) on a class-balanced
    ``fraction`` of the training labels for ``settings.finetune_steps`` steps; top-1 (%) on the test images."""
    data = config.data
    train = labelled_split(settings, "train", settings.train_images)
    labelled = len(balanced_label_subset(train.labels, fraction, settings.seed))
    recipe = load_transfer_config("finetune", resolve_config_path(FINETUNE_CONFIG), list(settings.finetune_overrides))
    per_epoch = labelled // recipe.train.batch_size
    if per_epoch < 1:
        raise MimkitError(
            f"{labelled} labelled images are fewer than one fine-tuning batch of {recipe.train.batch_size}"
        )
    epochs = math.ceil(settings.finetune_steps / per_epoch)
    overrides = [
        f"model.name={config.model.name}",
        f"model.args={json.dumps(config.model.args)}",
        f"model.checkpoint={checkpoint if checkpoint is not None else 'null'}",
        f"data.img_size={data.img_size}",
        f"data.in_chans={data.in_chans}",
        f"data.mean={list(data.mean)}",
        f"data.std={list(data.std)}",
        f"data.label_fraction={fraction}",
        f"data.label_seed={settings.seed}",
        f"train.epochs={epochs}",
        f"train.max_steps={settings.finetune_steps}",
        f"train.seed={settings.seed}",
        f"optim.warmup_epochs={0.1 * settings.finetune_steps / per_epoch}",
        f"output={output}",
        *settings.finetune_overrides,
    ]
    for name, value in (("train_path", settings.data_path), ("train_limit", settings.train_images)):
        if value:
            overrides.append(f"data.{name}={value}")
    if settings.test_images:
        overrides.append(f"data.val_limit={settings.test_images}")
    transfer = load_transfer_config("finetune", resolve_config_path(FINETUNE_CONFIG), overrides)
    return TransferTrainer(transfer).run().last_top1


def fraction_label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def run_method(method: str, settings: QualitySettings, output: Path, say=print) -> MethodResult:
    """Pretrain ``method`` in segments ending at each evaluation point, score each point, then fine-tune from
    the final weights and from a random init with every label share. ``output/method`` is cleared first, so a
    checkpoint of an earlier run is never resumed."""
    start = time.perf_counter()
    shutil.rmtree(output / method, ignore_errors=True)
    config = method_config(method, settings, output / method / "pretrain")
    steps = settings.steps if settings.steps is not None else budget_steps(config)
    result = MethodResult(method, METHOD_CONFIGS[method], config.model.name, steps)
    evaluate = PointEvaluator(config, settings)
    checkpoint = None
    for point in eval_schedule(steps, settings.eval_points):
        if point == 0:
            model = Pretrainer(config).model
        else:
            say(f"[quality] {method}: pretraining to step {point} of {steps}")
            segment_start = time.perf_counter()
            config.train.max_steps = point
            checkpoint = pretrain(config, resume="auto" if checkpoint else None).checkpoint
            result.pretrain_seconds += time.perf_counter() - segment_start
            model = load_pretrained(config, checkpoint)
        say(f"[quality] {method}: scoring the encoder at step {point} (kNN, linear probe, reconstruction)")
        scores = evaluate(model, point)
        result.points.append(scores)
        say(
            f"[quality] {method} step {point}: kNN {scores.knn_top1:.2f}%  probe {scores.probe_top1:.2f}%  "
            f"held-out loss {scores.recon_loss:.4f}"
        )
    for fraction in settings.label_fractions:
        label = fraction_label(fraction)
        result.finetune[label] = {}
        for init, weights in (("pretrained", checkpoint), ("random", None)):
            say(f"[quality] {method}: fine-tuning with {label} of the labels from the {init} encoder")
            run_dir = output / method / f"finetune_{init}_{label.rstrip('%')}pct"
            result.finetune[label][init] = finetune_top1(config, weights, fraction, settings, run_dir)
    result.seconds = time.perf_counter() - start
    return result


def run_quality(methods: Sequence[str], settings: QualitySettings, output: str | Path, say=print) -> QualityReport:
    """Run the benchmark for ``methods`` and write ``results.json``, ``results.md`` and
    ``accuracy_vs_steps.png`` under ``output``."""
    from mimkit.quality_report import write_report

    start = time.perf_counter()
    methods = check_methods(methods)
    output = Path(output)
    say("[quality] raw-pixel baseline: linear probe on 28x28 pixels")
    baseline = raw_pixel_probe(settings)
    results = [run_method(method, settings, output, say) for method in methods]
    report = QualityReport(results, baseline, settings, time.perf_counter() - start)
    write_report(report, output)
    return report
