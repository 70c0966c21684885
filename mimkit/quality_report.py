"""Writing the quality benchmark's results: ``results.json``, the markdown tables and the accuracy plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mimkit.quality import MethodResult, QualityReport

PLOT_NAME = "accuracy_vs_steps.png"


def _final_table(report: QualityReport) -> list[str]:
    fractions = list(report.methods[0].finetune) if report.methods else []
    header = ["method", "steps", "kNN top-1 (init -> final)", "probe top-1 (init -> final)"]
    header += [f"fine-tune {f} labels (random -> pretrained)" for f in fractions]
    header += ["held-out loss (init -> final)", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in report.methods:
        first, last = result.points[0], result.points[-1]
        cells = [
            result.method,
            str(result.steps),
            f"{first.knn_top1:.2f} -> {last.knn_top1:.2f}",
            f"{first.probe_top1:.2f} -> {last.probe_top1:.2f}",
        ]
        cells += [f"{result.finetune[f]['random']:.2f} -> {result.finetune[f]['pretrained']:.2f}" for f in fractions]
        cells += [f"{first.recon_loss:.4f} -> {last.recon_loss:.4f}", f"{result.seconds / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    blank = ["-"] * (len(header) - 4)
    row = ["raw pixels (linear)", "-", "-", f"{report.raw_pixel_probe_top1:.2f}", *blank]
    lines.append("| " + " | ".join(row[: len(header)]) + " |")
    return lines


def _points_table(methods: list[MethodResult]) -> list[str]:
    lines = ["| method | step | kNN top-1 | probe top-1 | held-out loss |", "|---|---|---|---|---|"]
    for result in methods:
        for point in result.points:
            lines.append(
                f"| {result.method} | {point.step} | {point.knn_top1:.2f} | {point.probe_top1:.2f} | "
                f"{point.recon_loss:.4f} |"
            )
    return lines


def format_markdown(report: QualityReport) -> str:
    """The summary table (step 0 = random init -> end of pretraining, fine-tuning random -> pretrained) and the
    per-point table, accuracies in % on the test images."""
    lines = _final_table(report) + [""] + _points_table(report.methods)
    lines += ["", f"Total wall time: {report.seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot_accuracy(report: QualityReport, path: Path) -> Path:
    """kNN and linear-probe top-1 against pretraining steps (one line per method, the raw-pixel probe as a
    dashed line) and the held-out reconstruction loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("knn_top1", "kNN top-1 (%)"), ("probe_top1", "linear probe top-1 (%)"), ("recon_loss", None))
    for axis, (key, title) in zip(axes, panels, strict=True):
        for result in report.methods:
            steps = [p.step for p in result.points]
            axis.plot(steps, [getattr(p, key) for p in result.points], marker="o", label=result.method)
        axis.set_xlabel("pretraining steps")
        if title is None:
            axis.set_title("masked-reconstruction loss, held-out test images")
            continue
        axis.axhline(report.raw_pixel_probe_top1, color="gray", linestyle="--", label="raw pixels (linear)")
        axis.set_title(title)
    axes[0].legend()
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
