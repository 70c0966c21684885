"""From a pretrained encoder to use: fine-tuning, linear probing and kNN classification."""

from mimkit.eval.classifier import Classifier, layer_decay_param_groups
from mimkit.eval.knn import knn_evaluate
from mimkit.eval.loading import load_encoder
from mimkit.eval.transfer import TransferSummary, finetune, linprobe

__all__ = [
    "Classifier",
    "TransferSummary",
    "finetune",
    "knn_evaluate",
    "layer_decay_param_groups",
    "linprobe",
    "load_encoder",
]
