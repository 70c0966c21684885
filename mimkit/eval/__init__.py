"""From a pretrained encoder to use: fine-tuning and linear probing (:mod:`mimkit.eval.transfer`), kNN
classification (:mod:`mimkit.eval.knn`), loading encoders (:mod:`mimkit.eval.loading`) and their configurations
(:mod:`mimkit.eval.config`, which imports no torch)."""
