"""ConvViT as a detection backbone (MCMAE Sec. 2.3, after Li et al.'s "Benchmarking detection transfer learning
with vision transformers").

At detection resolutions stage 3's global attention is too costly, so every stage-3 block except the 1st, 4th,
7th and 11th attends inside 7x7 windows, shifted by half a window in every other local block (as Swin). Global
blocks share one relative position bias table and local blocks another (:mod:`mimkit.backbones.window_attention`).
The blocks keep the pretrained weights; the bias tables start at zero, so on a grid that fits one window the
detection encoder computes exactly what the pretrained encoder does. Feature maps E1..E4 are as for
:class:`ConvViTEncoder`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mimkit.backbones.convvit import ConvViTEncoder
from mimkit.backbones.window_attention import MAX_GRID, WindowedBlocks, scaled_blocks

WINDOW = 7
"""MCMAE's stage-3 window (tokens)."""
GLOBAL_BLOCKS = (0, 3, 6, 10)
"""0-based stage-3 blocks that keep global attention (the 1st, 4th, 7th and 11th of ConvViT-B's 11); other depths
get as many (deeper) or proportionally fewer (shallower), evenly spaced from the first block."""


class ConvViTDetectionEncoder(WindowedBlocks, ConvViTEncoder):
    """:class:`ConvViTEncoder` whose stage 3 mixes global and (shifted) window attention; for whole images
    only (fine-tuning, detection), not for masked pretraining."""

    def __init__(
        self,
        *args,
        window: int = WINDOW,
        global_blocks: Sequence[int] | None = None,
        max_grid: int = MAX_GRID,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        heads, depth = self.blocks3[0].attn.num_heads, len(self.blocks3)
        if global_blocks is None:
            global_blocks = scaled_blocks(depth, GLOBAL_BLOCKS, paper_depth=11)
        self.init_window_attention(heads, depth, window, global_blocks, shift_windows=True, max_grid=max_grid)

    @classmethod
    def from_encoder(cls, encoder: ConvViTEncoder, **options) -> ConvViTDetectionEncoder:
        """The detection variant of a (pretrained) encoder, with its weights and zero bias tables."""
        detection = cls(**encoder.init_kwargs, **options).to(next(encoder.parameters()).device)
        missing, unexpected = detection.load_state_dict(encoder.state_dict(), strict=False)
        tables = {name for name, _ in detection.named_parameters() if name.endswith("_bias.table")}
        if unexpected or set(missing) != tables:
            raise ValueError(f"encoder does not fit its detection variant: missing {missing}, unexpected {unexpected}")
        return detection

    def run_stage3(self, x: torch.Tensor, grid: tuple[int, int], masked: bool) -> torch.Tensor:
        if masked:
            raise ValueError("the detection encoder runs on whole images; pretrain with ConvViTEncoder")
        return self.run_blocks(self.blocks3, x, grid)[0]
