"""MixMAE's masked self-attention in a global window: mimkit's dense window with a -inf group mask next to the
straightforward per-group formulation (gather each image's tokens, attend among them, scatter back), forward and
backward of one attention layer, timed in one run and checked equal.

python benchmarks/mixmae_group_attention.py              # Swin-B stage 3 at 224 px: 14x14 tokens, 512 wide
python benchmarks/mixmae_group_attention.py --stage 4    # stage 4: 7x7 tokens, 1024 wide

Per-group attention computes half the attention scores, but at these sizes (196 tokens, 32-wide heads) the
score products are small next to the gathers and scatters it adds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mimkit.backbones.swin import WindowAttention, window_group_mask
from mimkit.masking_mix import pair_mix_mask

STAGES = {3: (14, 512, 16), 4: (7, 1024, 32)}
"""Swin-B at 224 px: stage -> (tokens per side = window, width, heads)."""


def per_group_attention(attn: WindowAttention, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference path: ``x`` ``(B, 1, N, C)`` one window; attention among the tokens of each label separately."""
    b, _, n, c = x.shape
    q, k, v = attn.qkv(x[:, 0]).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = attn.position_bias()
    out = torch.zeros_like(q)
    for group in labels.unique():
        index = torch.nonzero(labels == group).flatten()
        group_bias = bias[:, index][:, :, index]
        out[:, :, index] = F.scaled_dot_product_attention(
            q[:, :, index], k[:, :, index], v[:, :, index], attn_mask=group_bias
        )
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))[:, None]


def median_seconds(function: Callable[[], torch.Tensor], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        function().square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=sorted(STAGES), default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    side, width, heads = STAGES[args.stage]
    torch.manual_seed(0)
    attn = WindowAttention(width, heads, side)
    x = torch.randn(args.batch, 1, side * side, width, requires_grad=True)
    regions = 7  # 32-px mixing regions on a 224-px image
    mix = pair_mix_mask(torch.rand(regions * regions), args.batch)
    factor = side // regions
    label_map = mix.labels.reshape(1, regions, regions).repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    mask = window_group_mask(label_map, side, side, side, x.dtype)
    labels = label_map.flatten()
    dense = attn(x, mask)
    grouped = per_group_attention(attn, x, labels)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, Swin-B stage {args.stage}: batch {args.batch}"
    )
    difference = (dense - grouped).abs().max().item()
    print(f"{side * side} tokens, width {width}, {heads} heads; max |dense - per-group| = {difference:.2e}")
    timings = {
        "dense window + group mask (mimkit)": median_seconds(lambda: attn(x, mask), args.repeats),
        "per-group gather/scatter (reference)": median_seconds(
            lambda: per_group_attention(attn, x, labels), args.repeats
        ),
    }
    reference = timings["per-group gather/scatter (reference)"]
    for label, seconds in timings.items():
        print(f"{label:<38} {seconds * 1000:8.1f} ms  {reference / seconds:5.2f}x")


if __name__ == "__main__":
    main()
