"""Focused mimicking's visible tokens: chosen by a teacher's [CLS] attention (MR-MAE Sec. 3.3).

The paper says only that "the most salient tokens in the teacher's attention maps" are selected. mimkit turns
the saliency and the uniform masking noise into *scores* that :func:`mimkit.masking.random_masking` reads
like noise (smallest score = visible), so a run stays replayable from its noise tensor:

* ``rule="sample"`` (default): visible tokens are drawn without replacement with probability proportional to
  the saliency (Gumbel-top-k: score = -(log a + g), g = -log(-log u) from the noise u), as MILAN's
  attention-guided sampling does. Salient tokens are seen most often, yet every token keeps a chance, so the
  decoder still learns to reconstruct objects and not only background.
* ``rule="top"``: the literal reading, the K most salient tokens are visible (the noise is not used; equal
  saliencies keep their spatial order).
"""

from __future__ import annotations

import torch

from mimkit.model_configs.mrmae import FocusRule

_TINY = 1e-12


def focused_scores(saliency: torch.Tensor, noise: torch.Tensor, rule: FocusRule = "sample") -> torch.Tensor:
    """``(B, L)`` scores from ``(B, L)`` non-negative saliency and ``(B, L)`` uniform [0, 1) noise."""
    if saliency.shape != noise.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and noise {tuple(noise.shape)} must have the same shape")
    log_saliency = saliency.float().clamp_min(_TINY).log()
    if rule == "top":
        return -log_saliency
    if rule != "sample":
        raise ValueError(f"focus rule must be 'sample' or 'top', got {rule!r}")
    uniform = noise.float().clamp(_TINY, 1 - 1e-7)
    gumbel = -(-uniform.log()).log()
    return -(log_saliency + gumbel)
