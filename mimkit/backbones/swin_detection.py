"""Swin as a detection and segmentation backbone (MixMAE Sec. 4 and App. A.1).

MixMAE pretrains with 14x14 windows (7x7 in stage 4) at 224 px, which are global in stages 3 and 4. For COCO at
1024 px it changes the window to 16x16, "divisible by the input 1024x1024 resolution", in every stage, and to 32x32
in the 6th, 12th and 18th stage-3 blocks "for cross-window interactions" (after Li et al.); ADE20K uses the same
windows. Windows stay unshifted, as in pretraining (MixMAE drops Swin's shifted windows). Maps that do not fill
whole windows are padded, and padding never reaches a real token (:class:`mimkit.backbones.swin.SwinBlock`).

Each block's relative position bias table (one row per offset of a ``(2w-1) x (2w-1)`` grid) is resized to its new
window by bicubic interpolation, as Swin does when fine-tuning at another window size: the zero-offset centre keeps
its value exactly, and a block whose window does not change keeps its table as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from timm.layers import resize_rel_pos_bias_table_simple
from timm.models.swin_transformer import get_relative_position_index
from torch import nn

from mimkit.backbones.swin import SwinBlock, SwinEncoder
from mimkit.backbones.window_attention import checked_global_blocks, checked_window, scaled_blocks

WINDOW = 16
"""MixMAE's detection and segmentation window, every stage."""
GLOBAL_BLOCKS = (5, 11, 17)
"""0-based stage-3 blocks with twice the window (the 6th, 12th and 18th of Swin-B/L's 18)."""


def resized_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """A ``((2w'-1)^2, heads)`` bias table for ``window`` w' from a square window's ``((2w-1)^2, heads)`` one."""
    size = 2 * window - 1
    resized = resize_rel_pos_bias_table_simple(table.detach().float(), (window, window), (size * size, table.shape[1]))
    return resized.to(table.dtype)


def set_window(block: SwinBlock, window: int) -> None:
    """Make ``block`` attend in ``window x window`` windows, its bias table resized to them."""
    if block.window == window:
        return
    attn = block.attn
    table = attn.relative_position_bias_table
    attn.relative_position_bias_table = nn.Parameter(resized_bias_table(table, window), table.requires_grad)
    index = get_relative_position_index(window, window).to(attn.relative_position_index.device)
    attn.register_buffer("relative_position_index", index, persistent=False)
    attn.window = block.window = window


def swin_with_dense_windows(
    encoder: SwinEncoder,
    window: int = WINDOW,
    global_blocks: Sequence[int] | None = None,
    global_window: int | None = None,
) -> SwinEncoder:
    """A copy of ``encoder`` with ``window`` in every block, except ``global_window`` (twice ``window`` unless
    given) in the stage-3 ``global_blocks`` (MixMAE's 6th, 12th and 18th of 18, scaled to the stage's depth)."""
    stage3_depth = len(encoder.layers[2].blocks)
    if global_blocks is None:
        global_blocks = scaled_blocks(stage3_depth, GLOBAL_BLOCKS, paper_depth=18)
    wide = checked_global_blocks(global_blocks, stage3_depth)
    window = checked_window(window)
    global_window = checked_window(global_window if global_window is not None else 2 * window)
    dense = copy.deepcopy(encoder)
    for stage, layer in enumerate(dense.layers):
        for index, block in enumerate(layer.blocks):
            set_window(block, global_window if stage == 2 and index in wide else window)
    return dense
