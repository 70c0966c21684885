"""Weighted k-nearest-neighbour classification on frozen features (the protocol of Wu et al. 2018 / DINO:
cosine similarity, the k=20 nearest training images vote with weight exp(similarity / 0.07))."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.data import AugmentedDataset, collate_items
from mimkit.data.sources import ImageSource
from mimkit.engine.distributed import resolve_device
from mimkit.eval.config import KnnConfig
from mimkit.eval.data import encoder_data_args, eval_transform_for, labelled_sources
from mimkit.eval.loading import load_encoder
from mimkit.output_guard import check_output


@torch.no_grad()
def extract_features(
    encoder: nn.Module, source: ImageSource, transform, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalized pooled features ``(N, D)`` and labels ``(N,)`` of every image of ``source``."""
    encoder.eval()
    loader = torch.utils.data.DataLoader(
        AugmentedDataset(source, transform), batch_size=batch_size, collate_fn=collate_items
    )
    features, labels = [], []
    for batch in loader:
        features.append(normalized_features(encoder, batch["image"], device))
        labels.append(batch["label"])
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def normalized_features(encoder: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """L2-normalized pooled features ``(B, D)`` of a batch of ``images``, on the CPU."""
    return F.normalize(encoder.pooled_features(images.to(device)).float(), dim=1).cpu()


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores ``(Q, num_classes)``: each of the ``k`` most similar training features votes for its class
    with weight ``exp(cosine / temperature)``. Features must be L2-normalized."""
    k = min(k, len(train_features))
    scores = []
    for start in range(0, len(query_features), chunk):
        similarity = query_features[start : start + chunk] @ train_features.T
        top, index = similarity.topk(k, dim=1)
        votes = torch.zeros(len(top), num_classes, dtype=top.dtype)
        votes.scatter_add_(1, train_labels[index], (top / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)


@dataclass
class KnnResult:
    top1: float
    top5: float
    train_images: int
    val_images: int
    seconds: float


def knn_evaluate(config: KnnConfig, dataset: object | None = None, val_dataset: object | None = None) -> KnnResult:
    """Extract features of the training and validation images with the configured encoder, classify the
    validation images by weighted kNN and report top-1/top-5 (in %); optionally write them as JSON (never over
    the checkpoint or another one). ``dataset`` and ``val_dataset``: the ``(image, label)`` datasets of a
    ``data.source: python`` run (:func:`mimkit.knn`)."""
    start = time.perf_counter()
    if config.output:
        check_output(config.output, [config.model.checkpoint])
    data = config.data
    device = resolve_device(config.device)
    train_source, val_source, num_classes = labelled_sources(data, dataset, val_dataset)
    args = {**config.model.args, **encoder_data_args(data)}
    encoder = load_encoder(config.model.name, args, config.model.checkpoint).to(device)
    transform = eval_transform_for(data)
    train_features, train_labels = extract_features(encoder, train_source, transform, config.batch_size, device)
    val_features, val_labels = extract_features(encoder, val_source, transform, config.batch_size, device)
    scores = knn_predict(train_features, train_labels, val_features, num_classes, config.k, config.temperature)
    ranked = scores.topk(min(5, num_classes), dim=1).indices
    result = KnnResult(
        top1=100 * (ranked[:, 0] == val_labels).float().mean().item(),
        top5=100 * (ranked == val_labels[:, None]).any(dim=1).float().mean().item(),
        train_images=len(train_source),
        val_images=len(val_source),
        seconds=time.perf_counter() - start,
    )
    if config.output:
        path = Path(config.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.__dict__, indent=2) + "\n")
    return result
