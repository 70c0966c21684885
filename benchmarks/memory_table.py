"""Memory per GPU of each method's base/large/huge size at the papers' per-GPU batch: weights, gradients, AdamW
state and activations, for DDP (everything replicated) and FSDP over 8 GPUs, with and without per-block activation
checkpointing. Prints a markdown table (``docs/benchmarks.md``, "Memory per GPU").

Computed, not measured on a GPU. The models are built on PyTorch's ``meta`` device (shapes without storage), so
even the huge sizes cost nothing to build or run; one forward pass at batch 2 and one at batch 4 record every tensor
autograd saves for the backward (``torch.autograd.graph.saved_tensors_hooks``), each storage counted once and the
model's own parameters and buffers left out; the bytes are linear in the batch, so the two points give the bytes at
the per-GPU batch. Run: ``python benchmarks/memory_table.py`` (about a minute on a CPU).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from unittest import mock

import torch
from torch import nn

from mimkit.engine.strategy import training_blocks
from mimkit.models import model_class, model_config

GiB = 2**30
FSDP_GPUS = 8
STATE_BYTES = {"weights": 4, "gradients": 4, "AdamW moments": 8}
"""Bytes per trained parameter under bf16 autocast: fp32 weights (they are the master copy; autocast casts on the
fly), fp32 gradients, AdamW's two fp32 moments."""
GATHER_BYTES = 2 * 2 + 4
"""FSDP's transient bytes per parameter of the largest block: its bf16 weights all-gathered, the next block's
prefetched alike, and its unsharded fp32 gradients before the reduce-scatter."""
MEASURED_BATCHES = (2, 4)
"""Two small batches (even: MixMAE mixes image pairs) whose saved bytes fix the per-sample slope."""


@dataclass(frozen=True)
class Recipe:
    """One method's sizes (registered model names), its pretraining batch per GPU and where that batch comes from."""

    method: str
    models: dict[str, str]
    batch_per_gpu: dict[str, int]
    source: str


RECIPES = (
    Recipe(
        "MAE ViT",
        {"base": "mae_vit_base_patch16", "large": "mae_vit_large_patch16", "huge": "mae_vit_huge_patch14"},
        {"base": 64, "large": 64, "huge": 64},
        "4096 images (MAE, Table 8) over 64 GPUs (8 nodes x 8, the authors' PRETRAIN.md): 64",
    ),
    Recipe(
        "ConvMAE",
        {"base": "convmae_base", "large": "convmae_large", "huge": "convmae_huge"},
        {"base": 128, "large": 128, "huge": 128},
        "1024 images (ConvMAE/MCMAE, sec. 4.1); the GPU count is not in the paper: 8 assumed, 128",
    ),
    Recipe(
        "MixMAE Swin",
        {"base": "mixmae_swin_base_w14", "large": "mixmae_swin_large_w14", "huge": "mixmae_swin_huge_w14"},
        {"base": 128, "large": 128, "huge": 128},
        "1024 images on 8 A100-80GB (MixMAE, Table 11 and sec. on pretraining time): 128",
    ),
    Recipe(
        "LocalMIM ViT",
        {"base": "localmim_vit_base", "large": "localmim_vit_large"},
        {"base": 256, "large": 512},
        "2048 (B) / 4096 (L) images (LocalMIM, Table 8); the GPU count is not in the paper: 8 assumed, 256 / 512",
    ),
    Recipe(
        "MR-MAE ViT",
        {"base": "mrmae_vit_base"},
        {"base": 128},
        "1024 images (MR-MAE, sec. 4.1); the GPU count is not in the paper: 8 assumed, 128",
    ),
    Recipe(
        "MR-MCMAE",
        {"base": "mrmcmae_base", "large": "mrmcmae_large", "huge": "mrmcmae_huge"},
        {"base": 128, "large": 128, "huge": 128},
        "1024 images (MR-MAE, sec. 4.1; sizes from its Table 4); 8 GPUs assumed, 128",
    ),
)
NOT_IN_PAPERS = (
    "LocalMIM has no huge size (its paper trains ViT-B/L and Swin-B/L)",
    "MR-MAE on a plain ViT is only trained at base size; its scaling study (Table 4) uses MR-MCMAE",
)


@dataclass
class Activations:
    """Bytes autograd saves for the backward in one forward pass."""

    total: int
    in_blocks: int
    """Of ``total``, saved while a block ran (what per-block checkpointing drops and recomputes)."""
    block_inputs: int
    """The blocks' inputs (what per-block checkpointing keeps instead)."""
    largest_block: int
    """The most one block saves (held again while that block's backward recomputes it)."""

    @property
    def checkpointed(self) -> int:
        return self.total - self.in_blocks + self.block_inputs + self.largest_block

    def at_batch(self, other: Activations, batches: tuple[int, int], batch: int) -> Activations:
        """The counts at ``batch``, on the line through this count (at ``batches[0]``) and ``other``'s."""
        low, high = batches

        def line(name: str) -> int:
            start = getattr(self, name)
            return round(start + (getattr(other, name) - start) * (batch - low) / (high - low))

        return Activations(line("total"), line("in_blocks"), line("block_inputs"), line("largest_block"))


def _bincount_meta(values: torch.Tensor, weights: torch.Tensor | None = None, minlength: int = 0) -> torch.Tensor:
    """``bincount`` on the meta device, which has none: MixMAE counts the source image of each token, whose indices
    are below the batch size it passes as ``minlength``, so the result has ``minlength`` entries."""
    return torch.empty(minlength, dtype=torch.int64 if weights is None else weights.dtype, device="meta")


META_KERNELS = torch.library.Library("aten", "IMPL")
if not torch._C._dispatch_has_kernel_for_dispatch_key("aten::bincount", "Meta"):  # once per process
    META_KERNELS.impl("bincount", _bincount_meta, "Meta")


def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention through a fused kernel, as a GPU runs it: the flash kernel without a mask, the
    memory-efficient kernel (which takes a learned bias and its gradient, Swin's) with one. Both save their inputs,
    output and per-row log-sum-exp for the backward; the meta device would take the unfused path and save the
    N x N attention probabilities, which a GPU run never holds. (The efficient kernel has no CPU implementation:
    on a CPU, masked attention stays unfused.)"""
    shape = query.shape
    if attn_mask is None:
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        return flash(query, key, value, dropout_p, is_causal, scale=scale)[0]
    if attn_mask.dtype == torch.bool:
        blocked = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
        attn_mask = blocked.masked_fill(~attn_mask, float("-inf"))
    bias = attn_mask.to(query.dtype).expand(*query.shape[:-2], query.shape[-2], key.shape[-2])
    heads = query.shape[-3:-2]  # the kernel takes (batch, heads, tokens, dim): leading dims join the batch
    query, key, value, bias = (t.reshape(-1, *heads, *t.shape[-2:]) for t in (query, key, value, bias))
    efficient = torch.ops.aten._scaled_dot_product_efficient_attention
    out = efficient(query, key, value, bias, True, dropout_p, is_causal, scale=scale)[0]
    return out.view(*shape[:-1], value.shape[-1])


def _storage_key(tensor: torch.Tensor) -> int:
    """The identity of a tensor's storage (shared by its views), on ``meta`` as on real devices."""
    return tensor.untyped_storage()._cdata


@contextmanager
def _block_tracking(blocks: list[nn.Module], current: list[int | None], inputs: list[torch.Tensor]) -> Iterator[None]:
    def enter(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            current[0] = index
            inputs.extend(arg for arg in args if isinstance(arg, torch.Tensor))

        return hook

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        current[0] = None

    handles = [block.register_forward_pre_hook(enter(index)) for index, block in enumerate(blocks)]
    handles += [block.register_forward_hook(leave) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def saved_activations(model: nn.Module, images: torch.Tensor, noise: torch.Tensor) -> Activations:
    """What autograd saves in one training forward of ``model`` (returning ``{"loss": ...}``) on ``images``: each
    storage once, the model's parameters and buffers left out, attributed to the block running when it was saved;
    attention through :func:`fused_attention`."""
    own = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    blocks = training_blocks(model)
    seen: dict[int, int] = {}
    per_block = [0] * len(blocks)
    current: list[int | None] = [None]
    inputs: list[torch.Tensor] = []
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = _storage_key(tensor)
        if key not in own and key not in seen:
            seen[key] = tensor.untyped_storage().nbytes()
            total += seen[key]
            if current[0] is not None:
                per_block[current[0]] += seen[key]
        return tensor

    with (
        _block_tracking(blocks, current, inputs),
        mock.patch("torch.nn.functional.scaled_dot_product_attention", fused_attention, create=False)
        if images.device.type == "meta"
        else nullcontext(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        model(images, noise=noise)["loss"]
    block_inputs = {_storage_key(t): t.untyped_storage().nbytes() for t in inputs}
    return Activations(total, sum(per_block), sum(block_inputs.values()), max(per_block, default=0))


def meta_model(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Model ``name`` on the meta device, in ``dtype``. MR-MAE's frozen teachers get random weights (their sizes,
    not their values, are what memory needs): the weights file they name is an empty placeholder, never read."""
    config = model_config(name)
    teachers = config.teacher_fields() if hasattr(config, "teacher_fields") else []
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as placeholder:
        for field, teacher in teachers:
            setattr(config, field, replace(teacher, weights=placeholder.name))
        with mock.patch("mimkit.teachers.build._load_strict"), torch.device("meta"):
            model = model_class(name)(config)
    return model.to(device="meta", dtype=dtype)


def measure(model: nn.Module, batch: int, img_size: int = 224) -> Activations:
    """The saved bytes of ``model`` at ``batch`` images of ``img_size``, from two forwards at small batches."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    counts = []
    for size in MEASURED_BATCHES:
        generator = torch.Generator().manual_seed(0)
        noise = model.sample_noise(size, (img_size, img_size), generator).to(device)
        images = torch.rand(size, 3, img_size, img_size, generator=generator).to(device=device, dtype=dtype)
        counts.append(saved_activations(model, images, noise))
    return counts[0].at_batch(counts[1], MEASURED_BATCHES, batch)


@dataclass
class MemoryRow:
    """Per-GPU bytes of one model at one batch."""

    name: str
    batch: int
    trained: int
    frozen: int
    largest_block_params: int
    fp32: Activations
    bf16: Activations

    @property
    def states(self) -> int:
        """Weights, gradients and AdamW moments of the trained parameters, plus fp32 frozen (teacher) weights."""
        return self.trained * sum(STATE_BYTES.values()) + 4 * self.frozen

    @property
    def fsdp_states(self) -> int:
        """Sharded over :data:`FSDP_GPUS` (the frozen teacher kept whole), plus the transient gathered block."""
        trained = self.trained * sum(STATE_BYTES.values()) // FSDP_GPUS
        return trained + 4 * self.frozen + self.largest_block_params * GATHER_BYTES


def memory_row(name: str, batch: int, img_size: int = 224) -> MemoryRow:
    fp32 = meta_model(name)
    trained = sum(p.numel() for p in fp32.parameters() if p.requires_grad)
    teachers = [p for teacher in getattr(fp32, "teachers", []) for p in teacher.parameters()]
    frozen = sum(p.numel() for p in (*fp32.parameters(), *teachers) if not p.requires_grad)
    largest = max((sum(p.numel() for p in b.parameters()) for b in training_blocks(fp32)), default=0)
    return MemoryRow(
        name,
        batch,
        trained,
        frozen,
        largest,
        measure(fp32, batch, img_size),
        measure(meta_model(name, torch.bfloat16), batch, img_size),
    )


def _gib(value: int) -> str:
    return f"{value / GiB:.1f}"


HEADER = (
    "| method | model | params M (trained + frozen) | batch / GPU | weights + grads + AdamW | activations fp32 | "
    "activations bf16 | bf16, checkpointed | DDP | DDP + ckpt | FSDP-8 | FSDP-8 + ckpt |"
)


def table(rows: list[tuple[str, MemoryRow]]) -> str:
    lines = [HEADER, "|" + " --- |" * HEADER.count(" | ") + " --- |"]
    for method, row in rows:
        params = f"{row.trained / 1e6:.0f}" + (f" + {row.frozen / 1e6:.0f}" if row.frozen else "")
        act, ckpt = row.bf16.total, row.bf16.checkpointed
        cells = [
            method,
            f"`{row.name}`",
            params,
            str(row.batch),
            _gib(row.states),
            _gib(row.fp32.total),
            _gib(act),
            _gib(ckpt),
            _gib(row.states + act),
            _gib(row.states + ckpt),
            _gib(row.fsdp_states + act),
            _gib(row.fsdp_states + ckpt),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--methods", nargs="*", help="methods to include (default: all), e.g. 'MAE ViT'")
    args = parser.parse_args(argv)
    rows = []
    sources = []
    for recipe in RECIPES:
        if args.methods and recipe.method not in args.methods:
            continue
        sources.append(f"- {recipe.method}: {recipe.source}.")
        for size, name in recipe.models.items():
            rows.append((recipe.method, memory_row(name, recipe.batch_per_gpu[size], args.img_size)))
    print(table(rows))
    print("\nGiB per GPU. Batch per GPU, from the papers:")
    print("\n".join(sources))
    print("\nNot in the papers, so not in the table: " + "; ".join(NOT_IN_PAPERS) + ".")


if __name__ == "__main__":
    main()
