"""Writing the quality benchmark's results: ``results.json``, the markdown tables and the accuracy plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mimkit.quality import ALL_LABELS, FrozenScores, QualityReport, fraction_label

PLOT_NAME = "accuracy_vs_steps.png"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(cells: list[str]) -> list[str]:
    return [_row(cells), "|" + "---|" * len(cells)]


def _frozen_cells(frozen: FrozenScores, shares: list[str]) -> list[str]:
    return [f"{frozen.knn_top1[s]:.2f}" for s in shares] + [f"{frozen.probe_top1[s]:.2f}" for s in shares]


def _frozen_table(report: QualityReport) -> list[str]:
    """Frozen features at each label share: the references, then every method at its first and last point."""
    shares = [fraction_label(f) for f in report.settings.scored_fractions()]
    lines = _header(["features", "step", *[f"kNN {s}" for s in shares], *[f"probe {s}" for s in shares]])
    for reference in report.references:
        lines.append(_row([reference.name, "-", *_frozen_cells(reference.frozen, shares)]))
    for result in report.methods:
        for point in (result.points[0], result.points[-1]):
            lines.append(_row([result.method, str(point.step), *_frozen_cells(point.frozen, shares)]))
    return lines


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _finetune_table(report: QualityReport) -> list[str]:
    """Fine-tuning top-1 per label share, random init -> pretrained, and each method's minutes."""
    plan = report.settings.finetune_plan()
    shares = [fraction_label(f) for f, _ in plan]
    header = [
        "method",
        "steps",
        *[f"fine-tune {s} labels, {_epochs(e)} (random -> pretrained)" for (_, e), s in zip(plan, shares, strict=True)],
    ]
    lines = _header([*header, "minutes (all of the method's runs)"])
    for result in report.methods:
        cells = [result.method, str(result.steps)]
        for share in shares:
            runs = result.finetune[share]
            cells.append(f"{runs['random'].top1:.2f} -> **{runs['pretrained'].top1:.2f}**")
        lines.append(_row([*cells, f"{result.seconds / 60:.1f}"]))
    return lines


def _points_table(report: QualityReport) -> list[str]:
    every = fraction_label(ALL_LABELS)
    lines = _header(["method", "step", f"kNN top-1 ({every})", f"probe top-1 ({every})", "held-out loss"])
    for result in report.methods:
        for point in result.points:
            frozen = point.frozen
            cells = [result.method, str(point.step), f"{frozen.knn_top1[every]:.2f}", f"{frozen.probe_top1[every]:.2f}"]
            lines.append(_row([*cells, f"{point.recon_loss:.4f}"]))
    return lines


def format_markdown(report: QualityReport) -> str:
    """The frozen-feature table (references and each method at its first and last point, per label share), the
    fine-tuning table (random -> pretrained) and the per-point table, accuracies in % on the test images."""
    lines = _frozen_table(report) + [""] + _finetune_table(report) + [""] + _points_table(report)
    lines += ["", f"Total wall time: {report.seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot_accuracy(report: QualityReport, path: Path) -> Path:
    """kNN and linear-probe top-1 (all labels) against pretraining steps, one line per method and the reference
    rows as dashed lines, and the held-out reconstruction loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = fraction_label(ALL_LABELS)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("knn_top1", "kNN top-1 (%)"), ("probe_top1", "linear probe top-1 (%)"))
    for axis, (key, title) in zip(axes, panels, strict=False):
        for result in report.methods:
            steps = [p.step for p in result.points]
            axis.plot(steps, [getattr(p.frozen, key)[every] for p in result.points], marker="o", label=result.method)
        for reference, style in zip(report.references, ("--", ":", "-."), strict=False):
            axis.axhline(getattr(reference.frozen, key)[every], color="gray", linestyle=style, label=reference.name)
        axis.set_xlabel("pretraining steps")
        axis.set_title(f"{title}, {every} of the labels")
    for result in report.methods:
        axes[2].plot([p.step for p in result.points], [p.recon_loss for p in result.points], marker="o")
    axes[2].set_xlabel("pretraining steps")
    axes[2].set_title("masked-reconstruction loss, held-out test images")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(report: QualityReport, output: Path) -> None:
    """``results.json``, ``results.md`` and the plot under ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (output / "results.md").write_text(format_markdown(report))
    plot_accuracy(report, output / PLOT_NAME)
