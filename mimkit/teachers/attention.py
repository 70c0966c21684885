"""The [CLS] attention map of a ViT's last block, the saliency that focused mimicking reads (MR-MAE Sec. 3.3).

Computed from the block's own ``norm1`` and ``qkv`` on the block's input, so timm models need no patching: a
forward pre-hook (:func:`mimkit.backbones.hooks.recorded_inputs`) records the input while the model runs.
"""

from __future__ import annotations

import torch
from torch import nn


def cls_attention(block: nn.Module, tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """``(B, L)`` softmax attention of token 0 ([CLS]) to the ``L`` patch tokens, averaged over heads.

    ``block`` is a timm ``Block`` (``norm1``, ``attn.qkv``, ``attn.q_norm``/``k_norm``, ``attn.scale``) and
    ``tokens`` ``(B, P + L, D)`` its input. Weights on the other prefix tokens are dropped, so a row sums to
    at most 1.
    """
    attn = block.attn
    batch, length, _ = tokens.shape
    qkv = attn.qkv(block.norm1(tokens)).reshape(batch, length, 3, attn.num_heads, attn.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return weights[:, :, 0, num_prefix_tokens:].mean(dim=1)
